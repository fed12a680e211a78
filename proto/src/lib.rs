//! portico-proto: the model every part of Portico shares (APIs, routes, integrations, stages,
//! deployments, gateway responses), its validation, and the declarative file format.
//!
//! Also the wire protocol between Portico processes: the frame codec ([`frame`]) and the
//! config sync messages between edges and control nodes ([`sync`]).
//!
//! No async runtime and no I/O: this crate is data and pure functions.

pub mod document;
pub mod frame;
pub mod mapping;
pub mod model;
pub mod route_key;
pub mod sync;
pub mod template;
pub mod validate;

pub use document::{DocumentError, Format, parse_document};
pub use model::*;
pub use route_key::{PathSegment, RouteKey, RouteMethod};
pub use template::{TemplatePart, UriTemplate};
pub use validate::{FieldError, ValidationErrors};
