//! Collects what the sandbox got: every requested feature lands in
//! `enforced` or in `not_enforced` with a reason.

use lockbox_protocol::{NotEnforced, SandboxReport};

#[derive(Default, Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Report(pub SandboxReport);

impl Report {
    pub fn ok(&mut self, feature: &str) {
        if !self.0.enforced.iter().any(|f| f == feature) {
            self.0.enforced.push(feature.to_string());
        }
    }

    pub fn not(&mut self, feature: &str, reason: impl Into<String>) {
        self.0.not_enforced.push(NotEnforced {
            feature: feature.to_string(),
            reason: reason.into(),
        });
    }

    pub fn outcome<E: std::fmt::Display>(&mut self, feature: &str, r: Result<(), E>) {
        match r {
            Ok(()) => self.ok(feature),
            Err(e) => self.not(feature, e.to_string()),
        }
    }

    pub fn merge(&mut self, other: Report) {
        for f in other.0.enforced {
            self.ok(&f);
        }
        self.0.not_enforced.extend(other.0.not_enforced);
    }
}
