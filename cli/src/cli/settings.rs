//! How `serve`'s settings are defined: once each, as a row of a `settings!` table.
//!
//! One row of the table names the setting's field (its flag is the field in kebab-case, its TOML
//! key the field itself unless `as "key"` says otherwise), its type, its parser (from
//! `super::parse`), its environment variable and its help. From the row the macro makes:
//! * the clap argument: `--flag` with `env`, the help and a `value_parser` that runs the row's
//!   parser, its errors naming the flag, the variable and the key;
//! * the key in the file's table: the table's `merge` refuses a key that is not a row (or one
//!   the caller reads itself, like `upstream.backends`), and parses the file's value with the
//!   same parser;
//! * the precedence: flag > environment (clap merges those) > file (`merge`) > default (the
//!   caller's `unwrap_or`, from the library's config defaults).
//!
//! The `--config` file is read here too ([`read_config`]): its top level holds `serve`'s keys,
//! its `[upstream]` table the gateway's.

use std::path::{Path, PathBuf};

/// Defines a table of settings: a clap `Args` struct whose fields are `Option<T>` (unset: not
/// given by flag or variable), its `KEYS`, and `merge`, which fills unset fields from a TOML
/// table. See the module doc.
#[macro_export]
macro_rules! settings {
    (
        $(#[$sattr:meta])*
        $vis:vis struct $name:ident in $table:literal {
            $(
                $(#[$fattr:meta])*
                $field:ident $(as $key:literal)? : $ty:ty = $parser:expr, $env:literal;
            )*
        }
    ) => {
        $(#[$sattr])*
        #[derive(clap::Args, Debug, Default, Clone)]
        $vis struct $name {
            $(
                $(#[$fattr])*
                #[arg(long, env = $env, value_parser = |s: &str| -> Result<$ty, String> {
                    ($parser)(s).map_err(|e| $crate::cli::settings::named(
                        stringify!($field),
                        $env,
                        $table,
                        $crate::settings!(@key $field $($key)?),
                        &e,
                    ))
                })]
                pub(super) $field: Option<$ty>,
            )*
        }

        impl $name {
            /// The keys of this table in the config file.
            pub(super) const KEYS: &'static [&'static str] =
                &[$($crate::settings!(@key $field $($key)?)),*];

            /// These settings with the unset ones taken from `file` (the table's keys, read
            /// from `path`; `other` keys are allowed and read by the caller); a key that is
            /// not a setting, or a bad value, is an error naming the key, the flag and the
            /// variable.
            pub(super) fn merge(&self, file: &toml::Table, other: &[&str], path: &std::path::Path)
                -> Result<Self, String>
            {
                let known: Vec<&str> = Self::KEYS.iter().chain(other).copied().collect();
                $crate::cli::settings::check_keys(file, &known, $table, path)?;
                Ok($name {
                    $(
                        $field: match &self.$field {
                            Some(v) => Some(v.clone()),
                            None => $crate::cli::settings::from_file(
                                file,
                                $crate::settings!(@key $field $($key)?),
                                stringify!($field),
                                $env,
                                $table,
                                path,
                                $parser,
                            )?,
                        },
                    )*
                })
            }
        }
    };
    (@key $field:ident) => { stringify!($field) };
    (@key $field:ident $key:literal) => { $key };
}

/// A parser's error `e` with the names of its setting: the flag (`field` in kebab-case), the
/// variable and the key (`table` + `key`).
pub fn named(field: &str, env: &str, table: &str, key: &str, e: &str) -> String {
    format!(
        "{e} (flag --{}, variable {env}, config key `{table}{key}`)",
        field.replace('_', "-")
    )
}

/// Refuses keys of `file` that are not in `keys`, listing those that are.
pub fn check_keys(
    file: &toml::Table,
    keys: &[&str],
    table: &str,
    path: &Path,
) -> Result<(), String> {
    match file.keys().find(|k| !keys.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => Err(format!(
            "unknown key `{table}{k}` in {}; known keys{}: {}",
            path.display(),
            if table.is_empty() {
                String::new()
            } else {
                format!(" of [{}]", table.trim_end_matches('.'))
            },
            keys.join(", ")
        )),
    }
}

/// The file's value of `key` parsed with `parse` (`None`: not in the file). Numbers and booleans
/// are parsed as written, like the text of a flag.
pub fn from_file<T>(
    file: &toml::Table,
    key: &str,
    field: &str,
    env: &str,
    table: &str,
    path: &Path,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, String> {
    let Some(v) = file.get(key) else {
        return Ok(None);
    };
    let raw = scalar(&format!("{table}{key}"), v, path)?;
    parse(&raw).map(Some).map_err(|e| {
        format!(
            "invalid value `{raw}` for --{} ({env}, config key `{table}{key}`, from the config \
             file {}): {e}",
            field.replace('_', "-"),
            path.display()
        )
    })
}

/// A scalar TOML value as the string a flag would carry (numbers and booleans as written).
pub fn scalar(key: &str, v: &toml::Value, path: &Path) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        other => Err(format!(
            "key `{key}` in {}: unsupported value {other}",
            path.display()
        )),
    }
}

/// The `--config` file: `serve`'s keys (the top level) and the `[upstream]` table.
#[derive(Debug, Default)]
pub struct ConfigFile {
    /// Where it was read from (`None`: no file).
    pub path: Option<PathBuf>,
    /// The top level, without `upstream`.
    pub knobs: toml::Table,
    /// The `[upstream]` table.
    pub upstream: toml::Table,
}

impl ConfigFile {
    /// The path for messages.
    pub fn shown_path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new("the config file"))
    }
}

/// Reads a TOML settings file (no path: an empty one).
pub fn read_config(path: Option<&Path>) -> Result<ConfigFile, String> {
    let Some(path) = path else {
        return Ok(ConfigFile::default());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    parse_config(&text, path)
}

/// Parses the text of a TOML settings file read from `path` (named in errors). Its keys are
/// checked when they are merged with the flags (`merge` of each table).
pub fn parse_config(text: &str, path: &Path) -> Result<ConfigFile, String> {
    let mut knobs: toml::Table = text
        .parse()
        .map_err(|e| format!("config file {} is not valid TOML: {e}", path.display()))?;
    let upstream = match knobs.remove("upstream") {
        None => toml::Table::new(),
        Some(toml::Value::Table(t)) => t,
        Some(_) => {
            return Err(format!(
                "`upstream` in {} must be a table: write `[upstream]` above its keys",
                path.display()
            ));
        }
    };
    Ok(ConfigFile {
        path: Some(path.to_path_buf()),
        knobs,
        upstream,
    })
}
