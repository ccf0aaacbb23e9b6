use std::fmt;

/// Every kind of object Plinth stores. Content packs and roles will add kinds;
/// the API, store and CLI are generic over this list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Kind {
    Machine,
    BootEnv,
    Template,
    Param,
    Profile,
    Task,
    Stage,
    Workflow,
    Job,
    Subnet,
    Reservation,
    Lease,
    User,
    Role,
    Token,
    Content,
    Conflict,
    Image,
}

impl Kind {
    /// All kinds, in the order the API documents them.
    pub const ALL: [Kind; 18] = [
        Kind::Machine,
        Kind::BootEnv,
        Kind::Template,
        Kind::Param,
        Kind::Profile,
        Kind::Task,
        Kind::Stage,
        Kind::Workflow,
        Kind::Job,
        Kind::Subnet,
        Kind::Reservation,
        Kind::Lease,
        Kind::User,
        Kind::Role,
        Kind::Token,
        Kind::Content,
        Kind::Conflict,
        Kind::Image,
    ];

    /// Lower-case plural used in URLs, the CLI and the store.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Machine => "machines",
            Kind::BootEnv => "bootenvs",
            Kind::Template => "templates",
            Kind::Param => "params",
            Kind::Profile => "profiles",
            Kind::Task => "tasks",
            Kind::Stage => "stages",
            Kind::Workflow => "workflows",
            Kind::Job => "jobs",
            Kind::Subnet => "subnets",
            Kind::Reservation => "reservations",
            Kind::Lease => "leases",
            Kind::User => "users",
            Kind::Role => "roles",
            Kind::Content => "contents",
            Kind::Token => "tokens",
            Kind::Conflict => "conflicts",
            Kind::Image => "images",
        }
    }

    /// Parses the plural form.
    pub fn from_plural(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.plural() == s)
    }

    /// The field that holds an object's key.
    pub fn key_field(self) -> &'static str {
        match self {
            Kind::Machine | Kind::Job | Kind::Token | Kind::Conflict => "id",
            Kind::Reservation => "mac",
            Kind::Lease => "address",
            _ => "name",
        }
    }

    /// Whether the generic create/replace/patch routes may write this kind.
    /// Tokens are minted only by `POST /api/v1/auth/token`; packs are
    /// installed; conflicts are recorded by registrations and settled by
    /// their accept and reject routes.
    pub fn writable_via_api(self) -> bool {
        !matches!(self, Kind::Token | Kind::Content | Kind::Conflict)
    }

    /// Fields only the server sees (secrets' hashes): never returned, never
    /// set by a client, never copied into the audit log.
    pub fn server_only_fields(self) -> &'static [&'static str] {
        match self {
            Kind::User => &["password_hash"],
            Kind::Token => &["secret_hash"],
            _ => &[],
        }
    }

    /// Columns the CLI shows in a table, as top-level field names.
    pub fn table_columns(self) -> &'static [&'static str] {
        match self {
            Kind::Machine => &["id", "name", "address", "arch", "bootenv", "workflow", "stage"],
            Kind::BootEnv => &["name", "os", "kernel", "description"],
            Kind::Template => &["name", "description"],
            Kind::Param => &["name", "secure", "description"],
            Kind::Profile => &["name", "profiles", "description"],
            Kind::Task => &["name", "description"],
            Kind::Stage => &["name", "bootenv", "tasks", "reboot"],
            Kind::Workflow => &["name", "stages", "description"],
            Kind::Job => &["id", "machine", "task", "state", "exit_code"],
            Kind::Subnet => &["name", "cidr", "range_start", "range_end", "enabled"],
            Kind::Reservation => &["mac", "address", "hostname"],
            Kind::Lease => &["address", "mac", "state", "expires_at"],
            Kind::User => &["name", "roles", "description"],
            Kind::Token => &["id", "user", "expires_at", "description"],
            Kind::Role => &["name", "description"],
            Kind::Content => &["name", "version", "description"],
            Kind::Conflict => &["id", "machine", "state", "score", "address", "macs"],
            Kind::Image => &["name", "format", "size", "sha256", "description"],
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.plural())
    }
}
