//! Validation errors and the checks shared by every kind.
//!
//! A spec's `validate` method walks it and records [`FieldError`]s against
//! field paths rooted at `spec` (`spec.http[0].route[1].weight`). The loader
//! adds the file, document index and `kind namespace/name`.

use std::fmt;

/// One thing wrong with one field.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    /// Field path, for example `spec.http[0].route[1].weight`.
    pub path: String,
    /// What is wrong, said so the user knows how to fix it.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The errors collected while validating one object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Errors {
    items: Vec<FieldError>,
}

impl Errors {
    /// No errors yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that the field at `path` is wrong because of `message`.
    pub fn at(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.items.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The recorded errors, in the order found.
    pub fn into_vec(self) -> Vec<FieldError> {
        self.items
    }

    /// The recorded errors, in the order found.
    pub fn as_slice(&self) -> &[FieldError] {
        &self.items
    }
}
