//! Plinth's rendering layer: param resolution across layers (the machine,
//! its profiles, its stage, its workflow, `global`, the schema default),
//! with an explanation of where every value came from; sandboxed Jinja
//! templates rendered on the resolved params; a machine's view (params,
//! bootenv variant, templates, lease, network) with its render context; the
//! shared-content cache; and canary pins ([`pins`]).
//!
//! Resolution and rendering are pure functions apart from the hooks a
//! caller supplies (`machine_token()`, `join_token()`, `secure_param()`).
//! [`load`] reads objects through the `Store` trait and never writes;
//! nothing here touches files or sockets.
#![forbid(unsafe_code)]

mod machine;
mod params;
pub mod pins;
mod shared;
mod template;

pub use machine::{
    DebugRender, DebugTarget, METADATA_TOKEN_PLACEHOLDER, MachineView, Provisioner, TOKEN_PLACEHOLDER, load, load_with,
    view_from,
};
pub use params::{Layer, Layers, ResolveError, Resolved, resolve};
pub use shared::{LoadError, SHARED_KINDS, Shared, SharedCache, load_shared};
pub use template::{
    FUEL, Hooks, INLINE, MAX_OUTPUT, RenderError, SecureParams, Source, TokenMinter, check_syntax, render,
};
