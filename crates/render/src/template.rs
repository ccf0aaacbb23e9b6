//! Template rendering: Jinja syntax (minijinja), sandboxed. Templates see
//! only what they are given: the render context and the other templates by
//! name. No file system, network or environment. Strict undefined values,
//! an instruction budget (fuel) and a cap on the output size keep a bad
//! template from hanging or exhausting the server.

use minijinja::value::Value as JValue;
use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Instructions one render may execute.
pub const FUEL: u64 = 2_000_000;
/// Largest output one render may produce.
pub const MAX_OUTPUT: usize = 8 * 1024 * 1024;
/// Name under which inline template text is rendered.
pub const INLINE: &str = "<inline>";

/// A render failure, naming the template and line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("template `{template}`{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
pub struct RenderError {
    pub template: String,
    pub line: Option<usize>,
    pub message: String,
}

fn mac_parts(v: &str) -> Result<Vec<String>, Error> {
    let parts: Vec<String> = v.split([':', '-']).map(str::to_ascii_lowercase).collect();
    if parts.len() != 6 || parts.iter().any(|p| p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit())) {
        return Err(Error::new(ErrorKind::InvalidOperation, format!("`{v}` is not a MAC address")));
    }
    Ok(parts)
}

/// Issues a short-lived token scoped to the machine being rendered for.
pub type TokenMinter = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// Functions whose effect reaches beyond the render, supplied by the
/// caller. A render without them cannot have them: `machine_token()` fails
/// instead of inventing a token.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Backs `machine_token()`.
    pub machine_token: Option<TokenMinter>,
    /// Backs `join_token()`: a single-use token an unknown machine's
    /// discovery agent registers with.
    pub join_token: Option<TokenMinter>,
    /// Backs `secure_param(name)`: a secure param's value, given only when
    /// the machine itself asks (or a placeholder, in a debugging render).
    pub secure_param: Option<SecureParams>,
    /// Backs `metadata_token()`: a token that reads only the machine's
    /// metadata (`/t/<token>/meta-data`, ...), for the seed an image deploy
    /// leaves on the disk.
    pub metadata_token: Option<TokenMinter>,
}

/// Gives a secure param's plain value for the machine being rendered for.
pub type SecureParams = Arc<dyn Fn(&str) -> Result<Value, String> + Send + Sync>;

/// Adds `name()`, which returns the token `hook` mints (once per render),
/// or fails with `unavailable` when the render has no such hook.
fn add_token_function(
    env: &mut Environment<'_>,
    name: &'static str,
    hook: Option<TokenMinter>,
    unavailable: &'static str,
) {
    let minted = Arc::new(std::sync::OnceLock::<String>::new());
    env.add_function(name, move || -> Result<String, Error> {
        let Some(mint) = &hook else {
            return Err(Error::new(ErrorKind::InvalidOperation, unavailable));
        };
        if let Some(t) = minted.get() {
            return Ok(t.clone());
        }
        let t = mint().map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("{name}(): {e}")))?;
        Ok(minted.get_or_init(|| t).clone())
    });
}

/// Builds the sandboxed environment over `templates`.
fn environment<'a>(
    templates: Arc<HashMap<String, String>>,
    params: Arc<BTreeMap<String, Value>>,
    hooks: &Hooks,
) -> Environment<'a> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.set_loader(move |name| Ok(templates.get(name).cloned()));
    env.add_function("param", move |name: String, default: Option<JValue>| -> Result<JValue, Error> {
        match (params.get(&name), default) {
            (Some(v), _) => Ok(JValue::from(minijinja::value::Serde(v))),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(Error::new(
                ErrorKind::UndefinedError,
                format!("param `{name}` has no value for this machine (set it, give it a schema default, or call param(\"{name}\", default); a secure param is read with secure_param(\"{name}\"))"),
            )),
        }
    });
    // Tokens: only through these explicit calls, each minted at most once
    // per render however often the template calls it.
    add_token_function(
        &mut env,
        "machine_token",
        hooks.machine_token.clone(),
        "machine_token() is only available when the machine itself fetches the file",
    );
    add_token_function(
        &mut env,
        "metadata_token",
        hooks.metadata_token.clone(),
        "metadata_token() is only available in a task the machine's own agent fetches",
    );
    add_token_function(
        &mut env,
        "join_token",
        hooks.join_token.clone(),
        "join_token() is only available in the script for machines Plinth does not know yet",
    );
    // Secure values: only through this explicit call, and only when the
    // caller supplied them for this machine.
    let secure = hooks.secure_param.clone();
    env.add_function("secure_param", move |name: String| -> Result<JValue, Error> {
        let Some(get) = &secure else {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "secure_param() is only available in files and tasks the machine itself fetches",
            ));
        };
        get(&name)
            .map(|v| JValue::from(minijinja::value::Serde(v)))
            .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("secure_param(\"{name}\"): {e}")))
    });
    env.add_filter("url_host", |v: String| -> Result<String, Error> {
        let rest = v.split_once("://").map_or(v.as_str(), |(_, r)| r);
        Ok(rest.split(['/', '?', '#']).next().unwrap_or_default().to_owned())
    });
    env.add_filter("basename", |v: String| -> String { v.rsplit('/').next().unwrap_or_default().to_owned() });
    // One word for a POSIX shell, whatever it holds: `it's` -> `'it'\''s'`.
    env.add_filter("shell_quote", |v: JValue| -> String {
        let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
        format!("'{}'", text.replace('\'', "'\\''"))
    });
    // MAC formats: iPXE `52:54:00:12:34:56`, pxelinux `01-52-54-00-12-34-56`, grub/dash `52-54-00-12-34-56`.
    env.add_filter("mac_ipxe", |v: String| -> Result<String, Error> { Ok(mac_parts(&v)?.join(":")) });
    env.add_filter("mac_pxelinux", |v: String| -> Result<String, Error> {
        Ok(format!("01-{}", mac_parts(&v)?.join("-")))
    });
    env.add_filter("mac_dash", |v: String| -> Result<String, Error> { Ok(mac_parts(&v)?.join("-")) });
    env.add_filter("to_yaml", |v: JValue| -> Result<String, Error> {
        let json: Value =
            serde_json::to_value(&v).map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
        serde_yaml_ng::to_string(&json)
            .map(|y| y.trim_end().to_owned())
            .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))
    });
    env.add_filter("to_json", |v: JValue| -> Result<String, Error> {
        serde_json::to_string(&v).map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))
    });
    env
}

fn convert(e: &Error) -> RenderError {
    let mut message = e.detail().map(str::to_owned).unwrap_or_else(|| e.kind().to_string());
    if e.kind() == ErrorKind::OutOfFuel {
        message = format!("the template ran too long (over {FUEL} instructions)");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message = format!("{message}: {s}");
        source = s.source();
    }
    RenderError { template: e.name().unwrap_or(INLINE).to_owned(), line: e.line(), message }
}

/// What to render.
pub enum Source<'a> {
    /// A stored template by name.
    Named(&'a str),
    /// Template text given inline.
    Inline(&'a str),
}

/// Renders `source` with `context` (a JSON object) and `params` (for
/// `param(name)`), where `templates` are every stored template by name.
/// Checks that `text` parses as a template (syntax only: names it uses are
/// resolved when it renders). `what` names it in the error.
pub fn check_syntax(what: &str, text: &str) -> Result<(), RenderError> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    match env.template_from_named_str(INLINE, text) {
        Ok(_) => Ok(()),
        Err(e) => Err(RenderError { template: what.to_owned(), ..convert(&e) }),
    }
}

pub fn render(
    templates: Arc<HashMap<String, String>>,
    source: Source<'_>,
    context: &Value,
    params: Arc<BTreeMap<String, Value>>,
    hooks: &Hooks,
) -> Result<String, RenderError> {
    let env = environment(templates, params, hooks);
    let ctx = JValue::from(minijinja::value::Serde(context));
    let template = match source {
        Source::Named(name) => env.get_template(name),
        Source::Inline(text) => env.template_from_named_str(INLINE, text),
    }
    .map_err(|e| convert(&e))?;
    // The output goes into a writer that refuses to grow past the cap, so
    // a template printing a huge value stops there instead of building it.
    let mut out = Capped { bytes: Vec::new(), over: false };
    if let Err(e) = template.render_captured_to(ctx, &mut out) {
        if out.over {
            return Err(RenderError {
                template: e.name().unwrap_or(INLINE).to_owned(),
                line: e.line(),
                message: format!("output larger than {MAX_OUTPUT} bytes"),
            });
        }
        return Err(convert(&e));
    }
    String::from_utf8(out.bytes).map_err(|e| RenderError {
        template: INLINE.into(),
        line: None,
        message: format!("the output is not UTF-8: {e}"),
    })
}

/// A render's output, refused past [`MAX_OUTPUT`].
struct Capped {
    bytes: Vec<u8>,
    over: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_OUTPUT {
            self.over = true;
            return Err(std::io::Error::other("output larger than the cap"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(templates: &[(&str, &str)], source: Source<'_>, params: &[(&str, Value)]) -> Result<String, RenderError> {
        let t = templates.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let p = params.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        let ctx = json!({"machine": {"name": "web-1", "mac": "52:54:00:AA:bb:01"}});
        render(Arc::new(t), source, &ctx, Arc::new(p), &Hooks::default())
    }

    #[test]
    fn renders_context_params_includes_and_helpers() {
        let templates = [
            ("base", "host {{ machine.name }}\n{% include 'ntp' %}\n{% include param('site-snippet') %}"),
            ("ntp", "ntp {{ param('ntp') | join(' ') }}"),
            ("site-a", "site a {{ machine.mac | mac_pxelinux }}"),
        ];
        let out =
            run(&templates, Source::Named("base"), &[("ntp", json!(["a", "b"])), ("site-snippet", json!("site-a"))])
                .unwrap();
        assert_eq!(out, "host web-1\nntp a b\nsite a 01-52-54-00-aa-bb-01");
        let out = run(
            &[],
            Source::Inline("{{ param('x', 'fallback') }} {{ machine.mac | mac_ipxe }} {{ {'a': 1} | tojson }}"),
            &[],
        )
        .unwrap();
        assert_eq!(out, r#"fallback 52:54:00:aa:bb:01 {"a": 1}"#);
    }

    #[test]
    fn errors_name_the_template_the_line_and_what_is_missing() {
        let e = run(&[("t", "line one\n{{ machine.nope }}")], Source::Named("t"), &[]).unwrap_err();
        assert_eq!((e.template.as_str(), e.line), ("t", Some(2)));
        let e = run(&[("t", "{{ param('ntp') }}")], Source::Named("t"), &[]).unwrap_err();
        assert!(e.message.contains("param `ntp` has no value"), "{e}");
        let e = run(&[], Source::Named("missing"), &[]).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        let e = run(&[], Source::Inline("{% if %}"), &[]).unwrap_err();
        assert_eq!(e.template, INLINE);
    }

    #[test]
    fn hostile_templates_are_stopped() {
        let e = run(
            &[],
            Source::Inline("{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}"),
            &[],
        )
        .unwrap_err();
        assert!(e.message.contains("too long"), "{e}");
        let e = run(&[("loop", "{% include 'loop' %}")], Source::Named("loop"), &[]).unwrap_err();
        assert!(!e.message.is_empty(), "self-include ends in an error, not a stack overflow");
        // A huge value is cut off at the output cap as it is written, not
        // built whole first.
        let e = run(&[], Source::Inline("{{ 'x' * 9000000 }}"), &[]).unwrap_err();
        assert!(e.message.contains("output larger than"), "{e}");
        let e = run(&[], Source::Inline("{{ 'aa' | mac_ipxe }}"), &[]).unwrap_err();
        assert!(e.message.contains("not a MAC"), "{e}");
        // Deep recursion through macros ends in an error, not a crash.
        let e = run(&[], Source::Inline("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"), &[]).unwrap_err();
        assert!(!e.message.is_empty());
        // Nothing reaches files, the environment or other machines: there is
        // no function for it, and names that would be one are undefined.
        for probe in [
            "{% include '/etc/passwd' %}",
            "{% include '../../etc/passwd' %}",
            "{{ env('HOME') }}",
            "{{ open('/etc/passwd') }}",
            "{{ machine('other') }}",
            "{{ lookup('file', '/etc/passwd') }}",
        ] {
            let e = run(&[], Source::Inline(probe), &[]).unwrap_err();
            assert!(!e.message.contains("root:"), "{probe}: {e}");
        }
        let e = run(&[], Source::Inline("{{ machine_token() }}"), &[]).unwrap_err();
        assert!(e.message.contains("only available when the machine itself"), "{e}");
        // Nor a secure value: only through a hook the caller supplies.
        let e = run(&[], Source::Inline("{{ secure_param('root-password') }}"), &[]).unwrap_err();
        assert!(e.message.contains("only available in files and tasks the machine itself fetches"), "{e}");
    }

    #[test]
    fn secure_values_come_only_from_the_hook_and_param_does_not_give_them() {
        let hooks = Hooks {
            secure_param: Some(Arc::new(|name: &str| {
                if name == "root-password" { Ok(json!("s3cret")) } else { Err(format!("no secure param `{name}`")) }
            })),
            ..Hooks::default()
        };
        let r = |text: &str| render(Arc::default(), Source::Inline(text), &json!({}), Arc::default(), &hooks);
        assert_eq!(r("{{ secure_param('root-password') }}").unwrap(), "s3cret");
        assert!(r("{{ secure_param('other') }}").unwrap_err().message.contains("no secure param `other`"));
        let e = r("{{ param('root-password') }}").unwrap_err();
        assert!(e.message.contains("secure_param(\"root-password\")"), "{e}");
    }

    #[test]
    fn machine_token_is_minted_once_per_render_through_the_hook() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = calls.clone();
        let hooks = Hooks {
            machine_token: Some(Arc::new(move || {
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok("plt_x.y".to_owned())
            })),
            join_token: None,
            secure_param: None,
            metadata_token: None,
        };
        let out = render(
            Arc::default(),
            Source::Inline("{{ machine_token() }} {{ machine_token() }} {{ 'http://10.0.0.1:8091/a' | url_host }}"),
            &json!({}),
            Arc::default(),
            &hooks,
        )
        .unwrap();
        assert_eq!(out, "plt_x.y plt_x.y 10.0.0.1:8091");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn shell_quote_makes_one_word_of_anything() {
        let r =
            |text: &str| render(Arc::default(), Source::Inline(text), &json!({}), Arc::default(), &Hooks::default());
        assert_eq!(r("{{ \"it's $HOME `x`\" | shell_quote }}").unwrap(), "'it'\\''s $HOME `x`'");
        assert_eq!(r("{{ 4000 | shell_quote }}").unwrap(), "'4000'");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", r("{{ \"a'b; rm -rf /\" | shell_quote }}").unwrap()))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a'b; rm -rf /");
    }
}
