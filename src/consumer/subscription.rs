//! What this consumer subscribed to, and whether an assigned topic belongs to it.
//!
//! librdkafka treats a subscribed name starting with `^` as a regular expression; any other
//! name is a literal topic. The group coordinator can still hand a member partitions of
//! other topics (a static member restarted with a changed subscription gets its previous
//! assignment back; two jobs sharing a group id by mistake), so every assignment is checked
//! here before a partition is processed or gets a state directory.

use regex::Regex;

use crate::config::ConfigError;

#[derive(Debug, Clone)]
pub(crate) struct Subscription {
    topics: Vec<String>,
    patterns: Vec<Regex>,
}

impl Subscription {
    /// # Errors
    /// A `^` pattern that is not a valid regular expression.
    pub(crate) fn new(topics: &[String]) -> Result<Self, ConfigError> {
        let patterns = topics
            .iter()
            .filter(|t| t.starts_with('^'))
            .map(|t| {
                Regex::new(t).map_err(|_| ConfigError::Invalid {
                    name: "topics",
                    value: t.clone(),
                    reason: "a name starting with '^' is a regular expression, and this one does not parse",
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            topics: topics.to_vec(),
            patterns,
        })
    }

    /// Whether `topic` is one of the subscribed topics or matches a subscribed pattern.
    pub(crate) fn matches(&self, topic: &str) -> bool {
        self.topics
            .iter()
            .any(|t| !t.starts_with('^') && t == topic)
            || self.patterns.iter().any(|p| p.is_match(topic))
    }

    /// The subscription as configured.
    pub(crate) fn topics(&self) -> &[String] {
        &self.topics
    }

    /// The literal (non-pattern) topics.
    pub(crate) fn literal_topics(&self) -> impl Iterator<Item = &str> {
        self.topics
            .iter()
            .filter(|t| !t.starts_with('^'))
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_topics_and_patterns_match_only_their_topics() {
        let s = Subscription::new(&["views".into(), "^orders-[0-9]+$".into()]).unwrap();
        assert!(s.matches("views"));
        assert!(!s.matches("views-old"));
        assert!(s.matches("orders-12"));
        assert!(!s.matches("orders-x"));
        assert!(
            !s.matches("^orders-[0-9]+$"),
            "a pattern is not a literal topic"
        );
        assert_eq!(s.literal_topics().collect::<Vec<_>>(), ["views"]);
        assert!(Subscription::new(&["^(".into()]).is_err());
    }
}
