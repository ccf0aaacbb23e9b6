//! Plinth's rendering layer. Today: param resolution, exactly as PRODUCT.md
//! states it, with an explanation of where every value came from. Templates
//! (sandboxed Jinja) will render on top of the resolved params.
//!
//! Pure functions over objects the caller loaded: no I/O, no store access.
#![forbid(unsafe_code)]

mod params;
mod template;

pub use params::{Layer, Layers, ResolveError, Resolved, resolve};
pub use template::{FUEL, INLINE, MAX_OUTPUT, RenderError, Source, render};
