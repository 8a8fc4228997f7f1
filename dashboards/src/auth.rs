//! Sign-in, roles and CSRF for every page and API call: a signed session
//! cookie (password mode), a trusted proxy header (proxy mode) or nobody
//! (auth off); HTTP Basic for scripts; a CSRF token on every state change.

use std::num::NonZeroU32;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hmac, pbkdf2};
use serde::{Deserialize, Serialize};

use crate::config::{AuthConfig, AuthMode, Role};
use crate::Dashboards;

pub const SESSION_COOKIE: &str = "waybill_session";
/// The form field and header that carry the CSRF token.
pub const CSRF_FIELD: &str = "csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";
const PBKDF2_ITERATIONS: u32 = 100_000;
const HASH_PREFIX: &str = "pbkdf2-sha256";
/// A form body read to find its CSRF token is at most this large.
const MAX_FORM_BYTES: usize = 256 * 1024;

/// Who is asking, and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    pub name: String,
    pub role: Role,
    /// The token forms must send back.
    pub csrf: String,
    /// False when auth is off.
    pub signed_in: bool,
}

impl Viewer {
    pub fn can(&self, role: Role) -> bool {
        self.role >= role
    }
}

/// The CSRF token of the request's browser session, for every request
/// (also before sign-in, for the sign-in form).
#[derive(Debug, Clone)]
pub struct Csrf(pub String);

/// What the session cookie holds, signed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    /// Random per browser; the CSRF token is derived from it.
    sid: String,
    /// Signed-in user and role (password mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<(String, Role)>,
    /// Unix seconds after which the sign-in no longer counts.
    #[serde(default)]
    expires: u64,
}

/// The key that signs sessions and CSRF tokens.
pub struct Keys {
    key: hmac::Key,
}

impl Keys {
    pub fn new(config: &AuthConfig) -> Keys {
        let secret = match &config.session_secret {
            Some(secret) => secret.as_bytes().to_vec(),
            None => random_bytes(32),
        };
        Keys { key: hmac::Key::new(hmac::HMAC_SHA256, &secret) }
    }

    fn sign(&self, session: &Session) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(session).expect("a session serializes"));
        let tag = URL_SAFE_NO_PAD.encode(hmac::sign(&self.key, payload.as_bytes()));
        format!("{payload}.{tag}")
    }

    fn open(&self, cookie: &str) -> Option<Session> {
        let (payload, tag) = cookie.split_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        hmac::verify(&self.key, payload.as_bytes(), &tag).ok()?;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
    }

    fn csrf(&self, sid: &str) -> String {
        URL_SAFE_NO_PAD.encode(hmac::sign(&self.key, format!("csrf:{sid}").as_bytes()))
    }

    fn csrf_ok(&self, sid: &str, token: &str) -> bool {
        let Ok(tag) = URL_SAFE_NO_PAD.decode(token) else { return false };
        hmac::verify(&self.key, format!("csrf:{sid}").as_bytes(), &tag).is_ok()
    }
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0; n];
    SystemRandom::new().fill(&mut bytes).expect("the system's random source works");
    bytes
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// `pbkdf2-sha256$ITERATIONS$SALT$HASH` (base64) of `password`.
pub fn hash_password(password: &str) -> String {
    let salt = random_bytes(16);
    let mut hash = [0u8; 32];
    let iterations = NonZeroU32::new(PBKDF2_ITERATIONS).expect("non-zero");
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, iterations, &salt, password.as_bytes(), &mut hash);
    format!("{HASH_PREFIX}${PBKDF2_ITERATIONS}${}${}", STANDARD.encode(salt), STANDARD.encode(hash))
}

fn parse_hash(hash: &str) -> Option<(NonZeroU32, Vec<u8>, Vec<u8>)> {
    let mut parts = hash.split('$');
    (parts.next()? == HASH_PREFIX).then_some(())?;
    let iterations = NonZeroU32::new(parts.next()?.parse().ok()?)?;
    let salt = STANDARD.decode(parts.next()?).ok()?;
    let derived = STANDARD.decode(parts.next()?).ok()?;
    parts.next().is_none().then_some((iterations, salt, derived))
}

pub fn is_password_hash(hash: &str) -> bool {
    parse_hash(hash).is_some()
}

pub fn verify_password(hash: &str, password: &str) -> bool {
    parse_hash(hash).is_some_and(|(iterations, salt, derived)| {
        pbkdf2::verify(pbkdf2::PBKDF2_HMAC_SHA256, iterations, &salt, password.as_bytes(), &derived).is_ok()
    })
}

/// The role `name` has if `password` is theirs. An unknown name costs as
/// much as a wrong password, so timing does not tell which names exist.
pub fn check_user(config: &AuthConfig, name: &str, password: &str) -> Option<Role> {
    match config.users.iter().find(|u| u.name == name) {
        Some(user) => verify_password(user.password_hash.as_deref()?, password).then_some(user.role),
        None => {
            static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
            verify_password(DUMMY.get_or_init(|| hash_password("not a password")), password);
            None
        }
    }
}

/// [`check_user`] on a blocking thread: a hash takes tens of milliseconds,
/// which the async workers (shared with ingest) must not spend.
async fn check_user_off_runtime(config: &AuthConfig, name: String, password: String) -> Option<Role> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || check_user(&config, &name, &password)).await.ok().flatten()
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

/// Where to go after signing in: a path on this site, nothing else.
fn local_target(next: &str) -> String {
    let safe = next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains('\\')
        && !next.chars().any(|c| c.is_control() || c.is_whitespace());
    if safe {
        next.to_owned()
    } else {
        "/".to_owned()
    }
}

/// What a state-changing request needs: replays and exception work need
/// an operator; silences (they stop pages going out) an admin.
pub fn required_role(method: &Method, path: &str) -> Role {
    if method == Method::GET || method == Method::HEAD || path == "/logout" {
        Role::Viewer
    } else if path.contains("/silences") {
        Role::Admin
    } else {
        Role::Operator
    }
}

/// Paths anyone may reach: the sign-in form and the stylesheet.
fn is_public(path: &str) -> bool {
    path == "/login" || path.starts_with("/static/")
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(name)?.strip_prefix('='))
}

/// `user:password` of an `Authorization: Basic` header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic "))?;
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// The layer in front of every page and API route: finds the viewer,
/// sends strangers to sign in, refuses actions beyond the viewer's role
/// and state changes without a valid CSRF token.
pub async fn authenticate(State(dashboards): State<Dashboards>, request: Request, next: Next) -> Response {
    let config = &dashboards.config().auth;
    let keys = dashboards.keys();
    let path = request.uri().path().to_owned();
    let https = is_https(request.headers());
    let is_api = path.starts_with("/api/");
    let existing = cookie_value(request.headers(), SESSION_COOKIE).and_then(|c| keys.open(c));
    let fresh = existing.is_none();
    let mut session = existing.unwrap_or_else(|| Session { sid: URL_SAFE_NO_PAD.encode(random_bytes(16)), user: None, expires: 0 });
    if session.user.is_some() && session.expires < now_secs() {
        session.user = None;
    }
    // HTTP Basic counts only in password mode, and only once verified.
    let mut verified_basic = false;
    let identity: Option<(String, Role)> = match config.mode {
        AuthMode::None => Some(("anonymous".to_owned(), Role::Admin)),
        AuthMode::Password => match basic_credentials(request.headers()) {
            Some((user, password)) => match check_user_off_runtime(config, user.clone(), password).await {
                Some(role) => {
                    verified_basic = true;
                    Some((user, role))
                }
                None => return refuse(is_api, StatusCode::UNAUTHORIZED, "the user name or password is wrong"),
            },
            None => session.user.clone(),
        },
        AuthMode::Proxy => request.headers().get(config.user_header.as_str()).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()).map(|user| {
            let from_header = config.role_header.as_ref().and_then(|h| request.headers().get(h.as_str())).and_then(|v| v.to_str().ok()).and_then(Role::parse);
            let listed = config.users.iter().find(|u| u.name == user).map(|u| u.role);
            (user.to_owned(), from_header.or(listed).unwrap_or(config.default_role))
        }),
    };
    let csrf = keys.csrf(&session.sid);
    let viewer = identity.map(|(name, role)| Viewer { name, role, csrf: csrf.clone(), signed_in: config.mode != AuthMode::None });

    let mut request = request;
    let state_changing = !matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !is_public(&path) {
        let Some(viewer) = &viewer else {
            return match config.mode {
                AuthMode::Proxy => refuse(is_api, StatusCode::UNAUTHORIZED, &format!("the proxy did not name a user in {}", config.user_header)),
                _ if is_api || state_changing => refuse(is_api, StatusCode::UNAUTHORIZED, "sign in first (or send HTTP Basic credentials)"),
                _ => {
                    let next_path = request.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
                    let mut response = Redirect::to(&format!("/login?next={}", crate::page::url_encode(&next_path))).into_response();
                    if fresh {
                        set_session(&mut response, keys, &session, https);
                    }
                    response
                }
            };
        };
        let needed = required_role(request.method(), &path);
        if !viewer.can(needed) {
            return refuse(is_api, StatusCode::FORBIDDEN, &format!("{} may not do this: it needs the {} role", viewer.name, needed.as_str()));
        }
    }
    // Browsers cannot send a JSON body or a DELETE to another site without
    // a CORS preflight, which Waybill never grants: only forms (and other
    // simple requests) can be forged, and those must carry the token.
    // Scripts calling the API with HTTP Basic have no session to steal; a
    // browser never holds Basic credentials for Waybill (it never asks for
    // them), and pages still need the token.
    let forgeable = !(request.method() == Method::DELETE || is_json(request.headers()));
    if state_changing && !(verified_basic && is_api) && forgeable {
        let (parts, body) = request.into_parts();
        let bytes = match axum::body::to_bytes(body, MAX_FORM_BYTES).await {
            Ok(bytes) => bytes,
            Err(_) => return refuse(is_api, StatusCode::PAYLOAD_TOO_LARGE, "the form is too large"),
        };
        let from_header = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let from_form = form_field(&bytes, CSRF_FIELD);
        let token = from_header.or(from_form).unwrap_or_default();
        if fresh || !keys.csrf_ok(&session.sid, &token) {
            return refuse(is_api, StatusCode::FORBIDDEN, "the form's security token is missing or stale: reload the page and try again");
        }
        request = Request::from_parts(parts, Body::from(bytes));
    }
    request.extensions_mut().insert(Csrf(csrf));
    if let Some(viewer) = viewer {
        if viewer.signed_in {
            request.extensions_mut().insert(waybill_alerts::api::SignedIn(viewer.name.clone()));
        }
        request.extensions_mut().insert(viewer);
    }
    let mut response = next.run(request).await;
    if fresh {
        set_session(&mut response, keys, &session, https);
    }
    response
}

/// Whether the browser reached Waybill over HTTPS (directly or, as a
/// proxy says, in front of it): the session cookie is then `Secure`.
pub fn is_https(headers: &HeaderMap) -> bool {
    headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

fn set_session(response: &mut Response, keys: &Keys, session: &Session, secure: bool) {
    let secure = if secure { "; Secure" } else { "" };
    let cookie = format!("{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Lax{secure}", keys.sign(session));
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

fn form_field(body: &[u8], name: &str) -> Option<String> {
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(body).ok()?;
    fields.into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

/// A refusal: JSON for the API, a page for people.
fn refuse(is_api: bool, status: StatusCode, message: &str) -> Response {
    if is_api {
        (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
    } else {
        crate::page::error_page(status, message)
    }
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    pub user: String,
    pub password: String,
    #[serde(default)]
    pub next: String,
}

/// Signs `form.user` in (the CSRF token was checked by [`authenticate`]).
pub async fn sign_in(dashboards: &Dashboards, form: LoginForm, https: bool) -> Result<Response, &'static str> {
    let config = &dashboards.config().auth;
    if config.mode != AuthMode::Password {
        return Err("sign-in with a password is not turned on (dashboards.auth.mode)");
    }
    let keys = dashboards.keys();
    let Some(role) = check_user_off_runtime(config, form.user.clone(), form.password).await else {
        return Err("the user name or password is wrong");
    };
    // A new session id on sign-in, so a token seen before it is worthless.
    let session = Session {
        sid: URL_SAFE_NO_PAD.encode(random_bytes(16)),
        user: Some((form.user, role)),
        expires: now_secs() + config.session_ttl.as_secs(),
    };
    let target = local_target(&form.next);
    let mut response = Redirect::to(&target).into_response();
    set_session(&mut response, keys, &session, https);
    Ok(response)
}

/// Ends the sign-in: a fresh anonymous session.
pub fn sign_out(dashboards: &Dashboards, https: bool) -> Response {
    let session = Session { sid: URL_SAFE_NO_PAD.encode(random_bytes(16)), user: None, expires: 0 };
    let mut response = Redirect::to("/login").into_response();
    set_session(&mut response, dashboards.keys(), &session, https);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_verifies_against_its_hash_and_no_other() {
        let hash = hash_password("s3cret");
        assert!(is_password_hash(&hash));
        assert!(verify_password(&hash, "s3cret"));
        assert!(!verify_password(&hash, "s3cret "));
        assert!(!verify_password("plain-text", "plain-text"));
    }

    #[test]
    fn a_tampered_session_cookie_is_not_opened() {
        let keys = Keys::new(&AuthConfig::default());
        let session = Session { sid: "abc".into(), user: Some(("ops".into(), Role::Viewer)), expires: 1 };
        let cookie = keys.sign(&session);
        assert!(keys.open(&cookie).is_some());
        let forged = Session { user: Some(("ops".into(), Role::Admin)), ..session };
        let (_, tag) = cookie.split_once('.').unwrap();
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert!(keys.open(&format!("{payload}.{tag}")).is_none());
        assert!(keys.csrf_ok("abc", &keys.csrf("abc")));
        assert!(!keys.csrf_ok("abd", &keys.csrf("abc")));
    }

    #[test]
    fn only_reads_are_open_to_viewers() {
        assert_eq!(required_role(&Method::GET, "/exceptions"), Role::Viewer);
        assert_eq!(required_role(&Method::POST, "/exceptions/x/acknowledge"), Role::Operator);
        assert_eq!(required_role(&Method::POST, "/sla/silences"), Role::Admin);
        assert_eq!(required_role(&Method::DELETE, "/api/v1/silences/x"), Role::Admin);
        assert_eq!(required_role(&Method::POST, "/logout"), Role::Viewer);
    }

    #[test]
    fn after_sign_in_only_paths_of_this_site_are_followed() {
        assert_eq!(local_target("/board?state=stuck"), "/board?state=stuck");
        for outside in ["//evil.example", "/\\evil.example", "/\t/evil.example", "https://evil.example", "", "board"] {
            assert_eq!(local_target(outside), "/", "{outside:?}");
        }
    }
}
