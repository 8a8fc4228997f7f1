//! Source identity: optional bearer tokens, one per sending system. With
//! tokens configured, every request must carry one (HTTP `Authorization:
//! Bearer <token>`, gRPC metadata `authorization: Bearer <token>`), and the
//! token's source name is recorded on every row it sends. Without tokens,
//! requests are accepted and their source is empty.

use std::collections::HashMap;
use std::sync::Arc;

/// Tokens and the source each one names.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    by_token: Arc<HashMap<String, String>>,
}

impl Sources {
    /// `(source name, token)` pairs; an empty list turns authentication off.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        Sources { by_token: Arc::new(pairs.into_iter().map(|(source, token)| (token, source)).collect()) }
    }

    /// The source of a request from its `Authorization` value, or `None`
    /// when tokens are required and it carries no valid one.
    pub fn identify(&self, authorization: Option<&str>) -> Option<String> {
        if self.by_token.is_empty() {
            return Some(String::new());
        }
        let token = authorization?.trim().strip_prefix("Bearer ")?.trim();
        // Compare every token without an early exit, so timing does not
        // tell how much of a guess was right.
        let mut found = None;
        for (known, source) in self.by_token.iter() {
            let same = known.len() == token.len()
                && known.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
            if same {
                found = Some(source.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_tokens_everyone_is_anonymous() {
        assert_eq!(Sources::default().identify(None).as_deref(), Some(""));
    }

    #[test]
    fn tokens_name_their_source_and_others_are_refused() {
        let sources = Sources::new([("sap-erp".to_owned(), "t-erp-0123456789".to_owned())]);
        assert_eq!(sources.identify(Some("Bearer t-erp-0123456789")).as_deref(), Some("sap-erp"));
        assert_eq!(sources.identify(Some("Bearer wrong")), None);
        assert_eq!(sources.identify(Some("t-erp-0123456789")), None);
        assert_eq!(sources.identify(None), None);
    }
}
