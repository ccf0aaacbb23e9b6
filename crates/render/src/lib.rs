//! Plinth's rendering layer: param resolution exactly as PRODUCT.md states
//! it, with an explanation of where every value came from; sandboxed Jinja
//! templates rendered on top of the resolved params; and a machine's view
//! (params, bootenv, templates) with its render context.
//!
//! Resolution and rendering are pure functions. [`load`] reads objects
//! through the `Store` trait and never writes; nothing here touches files
//! or sockets.
#![forbid(unsafe_code)]

mod machine;
mod params;
pub mod pins;
mod template;

pub use machine::{
    LoadError, MachineView, Provisioner, SHARED_KINDS, Shared, SharedCache, load, load_shared, load_with, view_from,
};
pub use params::{Layer, Layers, ResolveError, Resolved, resolve};
pub use template::{
    FUEL, Hooks, INLINE, MAX_OUTPUT, RenderError, SecureParams, Source, TokenMinter, check_syntax, render,
};
