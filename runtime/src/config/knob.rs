//! One definition per knob: the [`section!`] macro declares a section's
//! fields once — type, default, doc (the help text) and flag — and derives
//! the struct (serde, unknown keys refused), its defaults, its [`Knob`]
//! list (flag `--FLAG`, environment `TESSERA_FLAG`) and a setter from a raw
//! string. `serve`'s flags, the environment and `--print-config` are all
//! generated from those lists, so no knob can be settable one way and not
//! another.

use std::fmt;

use serde::de::DeserializeOwned;

/// One configuration knob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Knob {
    /// The TOML section, e.g. `journal`.
    pub section: &'static str,
    /// The key in it, e.g. `data_dir`.
    pub name: &'static str,
    /// The flag without dashes, e.g. `data-dir`.
    pub flag: &'static str,
    /// What it does (its doc comment).
    pub help: &'static str,
}

impl Knob {
    /// `section.name`.
    pub fn key(&self) -> String {
        format!("{}.{}", self.section, self.name)
    }
    /// The environment variable: `TESSERA_` + the flag in capitals.
    pub fn env(&self) -> String {
        format!("TESSERA_{}", self.flag.to_ascii_uppercase().replace('-', "_"))
    }
}

/// Where a knob's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    Default,
    /// A key of this TOML file.
    File(String),
    /// This environment variable.
    Env(String),
    /// This command-line flag.
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::File(p) => write!(f, "file {p}"),
            Self::Env(v) => write!(f, "environment {v}"),
            Self::Flag(x) => write!(f, "flag --{x}"),
        }
    }
}

/// Parses a knob's raw value (a flag or environment string) as its type:
/// as a string first (strings, paths, names of variants — `sync-data` and
/// `sync_data` alike), then as a TOML literal (numbers, booleans).
pub fn parse_raw<T: DeserializeOwned>(raw: &str) -> Result<T, String> {
    #[derive(serde::Deserialize)]
    struct Literal<T> {
        v: T,
    }
    let parse = |toml_value: String| toml::from_str::<Literal<T>>(&format!("v = {toml_value}")).map(|l| l.v);
    let quoted = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let first = match parse(quoted(raw)) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    if let Ok(v) = parse(quoted(&raw.replace('-', "_"))) {
        return Ok(v);
    }
    parse(raw.to_owned()).map_err(|_| first.message().to_owned())
}

/// Declares a configuration section: its fields once, with their types,
/// defaults, docs and flags.
macro_rules! section {
    (
        $(#[doc = $sdoc:literal])*
        $name:ident $key:literal {
            $( $(#[doc = $doc:literal])+ $field:ident : $ty:ty = $default:expr, flag $flag:literal; )*
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            $( $(#[doc = $doc])+ pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        impl $name {
            /// This section's knobs, in declaration order.
            pub const KNOBS: &'static [$crate::config::Knob] = &[
                $( $crate::config::Knob {
                    section: $key,
                    name: stringify!($field),
                    flag: $flag,
                    help: concat!($($doc),+),
                }, )*
            ];

            /// Sets `field` from a raw flag or environment value.
            pub fn set(&mut self, field: &str, raw: &str) -> Result<(), String> {
                match field {
                    $( stringify!($field) => self.$field = $crate::config::knob::parse_raw(raw)?, )*
                    other => return Err(format!("no key `{other}` in [{}]", $key)),
                }
                Ok(())
            }

            /// Sets every knob whose `TESSERA_*` variable is set; returns
            /// what did not parse (those knobs keep their values), each
            /// naming its variable.
            pub fn set_from_env(&mut self) -> Vec<String> {
                Self::KNOBS
                    .iter()
                    .filter_map(|k| {
                        let raw = std::env::var(k.env()).ok()?;
                        self.set(k.name, &raw).err().map(|e| format!("{}: {e}", k.env()))
                    })
                    .collect()
            }
        }
    };
}

pub(crate) use section;
