//! IAM policy document types, serialised minified with a fixed key order.

use serde::{Deserialize, Serialize};

use crate::catalog::{self, Action};
use crate::profile::Condition;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    Allow,
    Deny,
}

/// IAM accepts a single string or an array; one element is written as a string to save space.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn from_vec(mut v: Vec<String>) -> Self {
        if v.len() == 1 {
            OneOrMany::One(v.remove(0))
        } else {
            OneOrMany::Many(v)
        }
    }
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        match self {
            OneOrMany::One(s) => std::slice::from_ref(s).iter().map(String::as_str),
            OneOrMany::Many(v) => v.iter().map(String::as_str),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    #[serde(rename = "Effect")]
    pub effect: Effect,
    #[serde(rename = "Action")]
    pub action: OneOrMany,
    #[serde(rename = "Resource")]
    pub resource: OneOrMany,
    #[serde(rename = "Condition", skip_serializing_if = "Option::is_none", default)]
    pub condition: Option<Condition>,
}

impl Statement {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a statement always serialises")
    }

    /// Whether the statement's Action matches the catalog action.
    pub fn matches_action(&self, action: &Action) -> bool {
        self.action.iter().any(|p| {
            p == "*"
                || p.split_once(':').is_some_and(|(svc, name)| {
                    svc.eq_ignore_ascii_case(action.service)
                        && catalog::wildcard_match(name, action.name)
                })
        })
    }

    /// An unconditional statement on every resource.
    pub fn is_blanket(&self) -> bool {
        self.condition.is_none() && self.resource.iter().any(|r| r == "*")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    #[serde(rename = "Version")]
    pub version: String,
    #[serde(rename = "Statement")]
    pub statement: Vec<Statement>,
}

impl PolicyDocument {
    pub fn new(statement: Vec<Statement>) -> Self {
        PolicyDocument {
            version: "2012-10-17".into(),
            statement,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a policy always serialises")
    }
}
