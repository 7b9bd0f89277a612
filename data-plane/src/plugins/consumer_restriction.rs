//! `consumer-restriction`: allows or refuses the consumer an auth plugin identified, by name,
//! group or route (see `postern_proto::model::plugins::consumer_restriction`). Runs after the
//! auth plugins (priority 2400 < 2500/2510). No identified consumer → 401; a refused one →
//! `rejected_code` (403) with `{"message": rejected_msg}`.

use std::collections::HashSet;

use http::StatusCode;
use postern_proto::model::ValidationError;
use postern_proto::model::plugins::consumer_restriction::{
    ConsumerRestrictionConfig, RestrictionType,
};
use postern_proto::model::plugins::parse;
use serde_json::Value;

use super::consumers::message;
use super::{Flow, Plugin, PluginResponse, RequestCtx, Step};

pub struct ConsumerRestriction {
    kind: RestrictionType,
    whitelist: Option<HashSet<String>>,
    blacklist: Option<HashSet<String>>,
    rejected: PluginResponse,
}

impl ConsumerRestriction {
    pub fn new(config: &Value) -> Result<ConsumerRestriction, ValidationError> {
        let c: ConsumerRestrictionConfig = parse(config)?;
        let status = StatusCode::from_u16(c.rejected_code)
            .map_err(|_| ValidationError::new("rejected_code", "not a status code"))?;
        let what = match c.kind {
            RestrictionType::ConsumerName => "consumer_name",
            RestrictionType::ConsumerGroupId => "consumer_group_id",
            RestrictionType::RouteId => "route_id",
        };
        let msg = c
            .rejected_msg
            .unwrap_or_else(|| format!("The {what} is forbidden."));
        Ok(ConsumerRestriction {
            kind: c.kind,
            whitelist: c.whitelist.map(|l| l.into_iter().collect()),
            blacklist: c.blacklist.map(|l| l.into_iter().collect()),
            rejected: message(status, &msg),
        })
    }

    fn check(&self, ctx: &RequestCtx) -> Flow {
        if ctx.consumer_name.is_none() && self.kind != RestrictionType::RouteId {
            return Flow::Respond(message(
                StatusCode::UNAUTHORIZED,
                "Missing authentication or identity verification.",
            ));
        }
        let value: Option<&str> = match self.kind {
            RestrictionType::ConsumerName => ctx.consumer_name.as_deref(),
            RestrictionType::ConsumerGroupId => ctx.consumer_group.as_deref(),
            RestrictionType::RouteId => Some(&ctx.route_id),
        };
        let listed = |list: &Option<HashSet<String>>| {
            list.as_ref().map(|l| value.is_some_and(|v| l.contains(v)))
        };
        // A consumer without a group is in no group's whitelist and no group's blacklist.
        let refused =
            listed(&self.blacklist) == Some(true) || listed(&self.whitelist) == Some(false);
        if refused {
            Flow::Respond(self.rejected.clone())
        } else {
            Flow::Continue
        }
    }
}

impl Plugin for ConsumerRestriction {
    fn name(&self) -> &'static str {
        "consumer-restriction"
    }

    fn is_auth(&self) -> bool {
        true
    }

    fn access<'a>(
        &'a self,
        _req: &'a mut http::request::Parts,
        ctx: &'a mut RequestCtx,
    ) -> Step<'a> {
        Step::Ready(self.check(ctx))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ctx(name: Option<&str>, group: Option<&str>) -> RequestCtx {
        let mut c = RequestCtx::new("127.0.0.1:1".parse().unwrap(), "r1".into());
        c.consumer_name = name.map(Into::into);
        c.consumer_group = group.map(Into::into);
        c
    }

    #[test]
    fn lists_decide() {
        let guide = json!({"type": "consumer_group_id", "whitelist": ["premium-users", "admin-group"],
            "rejected_code": 403, "rejected_msg": "Access denied: insufficient permissions"});
        /// Config, consumer name, consumer group → refusal (status, message), if any.
        type Case<'a> = (
            Value,
            Option<&'a str>,
            Option<&'a str>,
            Option<(u16, &'a str)>,
        );
        let cases: Vec<Case> = vec![
            (guide.clone(), Some("a"), Some("premium-users"), None),
            (guide.clone(), Some("a"), Some("admin-group"), None),
            (
                guide.clone(),
                Some("a"),
                Some("free-users"),
                Some((403, "Access denied: insufficient permissions")),
            ),
            (
                guide.clone(),
                Some("a"),
                None,
                Some((403, "Access denied: insufficient permissions")),
            ),
            (
                guide,
                None,
                None,
                Some((401, "Missing authentication or identity verification.")),
            ),
            (json!({"whitelist": ["alice"]}), Some("alice"), None, None),
            (
                json!({"whitelist": ["alice"]}),
                Some("bob"),
                None,
                Some((403, "The consumer_name is forbidden.")),
            ),
            (json!({"blacklist": ["bob"]}), Some("alice"), None, None),
            (
                json!({"blacklist": ["bob"], "rejected_code": 451}),
                Some("bob"),
                None,
                Some((451, "The consumer_name is forbidden.")),
            ),
            (
                json!({"type": "consumer_group_id", "blacklist": ["banned"]}),
                Some("a"),
                None,
                None,
            ),
            (
                json!({"type": "route_id", "whitelist": ["r1"]}),
                None,
                None,
                None,
            ),
            (
                json!({"type": "route_id", "blacklist": ["r1"]}),
                Some("a"),
                None,
                Some((403, "The route_id is forbidden.")),
            ),
            (
                json!({"blacklist": ["bob"], "whitelist": ["bob", "carol"]}),
                Some("bob"),
                None,
                Some((403, "The consumer_name is forbidden.")),
            ),
        ];
        for (config, name, group, want) in cases {
            let p = ConsumerRestriction::new(&config).unwrap();
            let got = match p.check(&ctx(name, group)) {
                Flow::Continue => None,
                Flow::Respond(r) => {
                    let body: Value = serde_json::from_slice(&r.body).unwrap();
                    Some((
                        r.status.as_u16(),
                        body["message"].as_str().unwrap().to_string(),
                    ))
                }
            };
            assert_eq!(
                got,
                want.map(|(s, m)| (s, m.to_string())),
                "{config} {name:?} {group:?}"
            );
        }
    }
}
