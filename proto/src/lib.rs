//! portico-proto: the model every part of Portico shares (APIs, routes, integrations, stages,
//! deployments, gateway responses), its validation, and the declarative file format.
//!
//! No async runtime and no I/O: this crate is data and pure functions.

pub mod document;
pub mod mapping;
pub mod model;
pub mod route_key;
pub mod template;
pub mod validate;

pub use document::{DocumentError, Format, parse_document};
pub use model::*;
pub use route_key::{PathSegment, RouteKey, RouteMethod};
pub use template::{TemplatePart, UriTemplate};
pub use validate::{FieldError, ValidationErrors};
