//! Business lineage: mapping rules from attributes to business keys,
//! milestones, systems and outcomes ([`extract`]); the resolver that joins
//! keys across traces into transactions ([`resolve`], [`graph`]); journeys
//! and deadlines ([`journey`]); and the transactions JSON API ([`api`]).

pub mod api;
pub mod config;
pub mod extract;
pub mod graph;
pub mod journey;
mod known;
pub mod rebuild;
pub mod resolve;

pub use config::LineageConfig;
pub use extract::Extractor;
pub use resolve::{Notifier, Resolver};
