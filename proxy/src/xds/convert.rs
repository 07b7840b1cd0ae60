//! Conversion helpers shared by the per-type handlers: the field-path error
//! type, durations, fractions, string matchers, header mutations.

use std::fmt::Display;
use std::time::Duration;

use keel_proto::envoy::config::core::v3::{HeaderValueOption, header_value_option};
use keel_proto::envoy::r#type::matcher::v3::{StringMatcher as PbStringMatcher, string_matcher};
use keel_proto::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
use keel_proto::google::protobuf::Duration as PbDuration;

use crate::state::route::{
    AppendAction, HeaderAdd, HeaderMutation, Regex, StringMatch, StringMatcher,
};

/// A field of a resource that cannot be honoured: where, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{reason}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
pub struct FieldError {
    /// The field path (`filter_chains[0].filters[0]`), empty for the resource itself.
    pub path: String,
    /// What is wrong and, where it helps, what would work.
    pub reason: String,
}

impl FieldError {
    /// An error at `path`.
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// Prefixes the path with the enclosing field.
    pub fn within(mut self, outer: impl Display) -> Self {
        self.path = if self.path.is_empty() {
            outer.to_string()
        } else if self.path.starts_with('[') {
            format!("{outer}{}", self.path)
        } else {
            format!("{outer}.{}", self.path)
        };
        self
    }
}

/// Shorthand for conversion results.
pub type Result<T> = std::result::Result<T, FieldError>;

/// Extension to prefix the path of an error result.
pub trait At<T> {
    /// Prefixes the error path with `outer`.
    fn at(self, outer: impl Display) -> Result<T>;
}

impl<T> At<T> for Result<T> {
    fn at(self, outer: impl Display) -> Result<T> {
        self.map_err(|e| e.within(outer))
    }
}

/// Collecting converted elements into a `Vec` of exactly their number.
/// (`collect::<Result<Vec<_>>>` cannot see the length through the
/// `Result`s: it starts at four and doubles, and converted config is kept
/// for as long as it serves, once per resource.)
pub trait CollectExact<T> {
    /// The elements, or the first error.
    fn collect_exact(self) -> Result<Vec<T>>;
}

impl<T, I: Iterator<Item = Result<T>>> CollectExact<T> for I {
    fn collect_exact(self) -> Result<Vec<T>> {
        let mut out = Vec::with_capacity(self.size_hint().0);
        for item in self {
            out.push(item?);
        }
        Ok(out)
    }
}

/// A protobuf duration as a std one; negative durations are an error.
pub fn duration(d: &PbDuration, path: &str) -> Result<Duration> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(FieldError::new(path, "duration must not be negative"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// An optional duration, where zero means "none" (Envoy's timeouts).
pub fn opt_nonzero_duration(d: Option<&PbDuration>, path: &str) -> Result<Option<Duration>> {
    match d {
        None => Ok(None),
        Some(d) => Ok(Some(duration(d, path)?).filter(|d| !d.is_zero())),
    }
}

/// A fractional percent as parts per million (capped at 1,000,000).
pub fn fraction_ppm(f: Option<&FractionalPercent>) -> u32 {
    let Some(f) = f else { return 1_000_000 };
    let scale = match DenominatorType::try_from(f.denominator) {
        Ok(DenominatorType::Hundred) => 10_000,
        Ok(DenominatorType::TenThousand) => 100,
        _ => 1,
    };
    f.numerator.saturating_mul(scale).min(1_000_000)
}

/// Compiles a regex, naming the field and the pattern on failure.
pub fn regex(pattern: &str, path: &str) -> Result<Regex> {
    Regex::new(pattern)
        .map_err(|e| FieldError::new(path, format!("regex {pattern:?} does not compile: {e}")))
}

/// An Envoy string matcher.
pub fn string_matcher(m: &PbStringMatcher, path: &str) -> Result<StringMatcher> {
    use string_matcher::MatchPattern;
    let pattern = match &m.match_pattern {
        Some(MatchPattern::Exact(s)) => StringMatch::Exact(s.clone()),
        Some(MatchPattern::Prefix(s)) => StringMatch::Prefix(s.clone()),
        Some(MatchPattern::Suffix(s)) => StringMatch::Suffix(s.clone()),
        Some(MatchPattern::Contains(s)) => StringMatch::Contains(s.clone()),
        Some(MatchPattern::SafeRegex(r)) => {
            StringMatch::Regex(regex(&r.regex, &format!("{path}.safe_regex"))?)
        }
        Some(MatchPattern::Custom(c)) => {
            return Err(FieldError::new(
                path,
                format!("unsupported custom string matcher {:?}", c.name),
            ));
        }
        None => return Err(FieldError::new(path, "string matcher has no pattern")),
    };
    Ok(StringMatcher {
        pattern,
        ignore_case: m.ignore_case,
    })
}

/// Header additions and removals (the deprecated `append` flag is honoured).
#[allow(deprecated)]
pub fn header_mutation(
    add: &[HeaderValueOption],
    remove: &[String],
    path: &str,
) -> Result<HeaderMutation> {
    use header_value_option::HeaderAppendAction as A;
    let mut out = HeaderMutation::default();
    for (i, h) in add.iter().enumerate() {
        let Some(hv) = &h.header else {
            return Err(FieldError::new(
                format!("{path}[{i}]"),
                "header is required",
            ));
        };
        let value = if hv.raw_value.is_empty() {
            hv.value.clone()
        } else {
            String::from_utf8(hv.raw_value.clone()).map_err(|_| {
                FieldError::new(format!("{path}[{i}].raw_value"), "must be valid UTF-8")
            })?
        };
        let action = match h.append {
            Some(b) if b.value => AppendAction::Append,
            Some(_) => AppendAction::Overwrite,
            None => match A::try_from(h.append_action) {
                Ok(A::AppendIfExistsOrAdd) => AppendAction::Append,
                Ok(A::AddIfAbsent) => AppendAction::AddIfAbsent,
                Ok(A::OverwriteIfExistsOrAdd) => AppendAction::Overwrite,
                Ok(A::OverwriteIfExists) => AppendAction::OverwriteIfExists,
                Err(_) => {
                    return Err(FieldError::new(
                        format!("{path}[{i}].append_action"),
                        format!("unknown append action {}", h.append_action),
                    ));
                }
            },
        };
        out.add.push(HeaderAdd {
            name: hv.key.to_ascii_lowercase(),
            value,
            action,
        });
    }
    out.remove = remove.iter().map(|h| h.to_ascii_lowercase()).collect();
    Ok(out)
}
