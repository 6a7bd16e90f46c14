//! Tenant pipelines (the seed's `plugins: {transform: [..], sinks: [{name, config}]}`) and the
//! one typed registry that builds them: a factory per plugin name, each reading its own config
//! and naming the field it refuses.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::envelope::CanonicalEvent;
use crate::plugin::{PluginContext, PluginInfo, SinkPlugin, TransformOutcome, TransformPlugin};

/// A tenant's pipeline, as configured.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// The chain and the sinks.
    pub plugins: PluginsSpec,
}

/// The transform chain (in order) and the sinks (each delivered to independently).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsSpec {
    /// Transforms, in order.
    #[serde(default)]
    pub transform: Vec<PluginRef>,
    /// Sinks.
    #[serde(default)]
    pub sinks: Vec<PluginRef>,
}

/// One plugin of a pipeline.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginRef {
    /// Registry name (`postgres_sink`, `kafka_sink`, `webhook_sink`, `passthrough`).
    pub name: String,
    /// A sink's id in this pipeline (defaults to its name; two sinks of one name need ids):
    /// delivery records, parked events and dead letters are kept per sink id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The plugin's own settings.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub config: Value,
    /// A sink's retry budget (defaults below).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
}

/// How long a sink's parked events are retried before they become dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Delivery attempts in all, the first included.
    pub max_attempts: u32,
    /// Delay after the first failed attempt; doubles (with jitter) up to `max_backoff_ms`.
    pub initial_backoff_ms: u64,
    /// Longest delay between attempts.
    pub max_backoff_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        // 1 s doubling to 5 min: twelve attempts span about half an hour.
        Self {
            max_attempts: 12,
            initial_backoff_ms: 1_000,
            max_backoff_ms: 300_000,
        }
    }
}

impl RetryPolicy {
    /// The delay after `attempts` failed attempts: exponential, capped, with up to 25 % jitter.
    pub fn delay_after(&self, attempts: u32) -> Duration {
        let exponent = attempts.saturating_sub(1).min(32);
        let base = self
            .initial_backoff_ms
            .saturating_mul(1u64 << exponent)
            .min(self.max_backoff_ms);
        let jitter = fastrand::u64(0..=base / 4);
        Duration::from_millis(
            base.saturating_add(jitter)
                .min(self.max_backoff_ms.max(base)),
        )
    }
}

/// A pipeline refused: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// Path of the bad field, e.g. `plugins.sinks[0].config.url`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// A plugin's config refused: the field inside its `config` (empty for the whole).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PluginConfigError {
    /// Field path inside `config`, e.g. `url`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl PluginConfigError {
    /// A refusal of `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Reads `config` as `T`, naming the field serde refused.
    pub fn parse<T: serde::de::DeserializeOwned>(config: &Value) -> Result<T, Self> {
        let config = if config.is_null() {
            Value::Object(Default::default())
        } else {
            config.clone()
        };
        // serde_json names the field in its message ("unknown field `x`", "missing field `y`").
        serde_json::from_value(config).map_err(|err| PluginConfigError::new("", err.to_string()))
    }
}

type TransformFactory =
    Arc<dyn Fn(&Value) -> Result<Arc<dyn TransformPlugin>, PluginConfigError> + Send + Sync>;
type SinkFactory =
    Arc<dyn Fn(&Value) -> Result<Arc<dyn SinkPlugin>, PluginConfigError> + Send + Sync>;

/// One sink of a built pipeline.
#[derive(Debug, Clone)]
pub struct BuiltSink {
    /// Its id in the pipeline.
    pub id: String,
    /// The plugin.
    pub plugin: Arc<dyn SinkPlugin>,
    /// Its retry budget.
    pub retry: RetryPolicy,
}

/// A pipeline ready to run.
#[derive(Debug, Clone)]
pub struct BuiltPipeline {
    /// The chain, in order.
    pub transforms: Vec<Arc<dyn TransformPlugin>>,
    /// The sinks.
    pub sinks: Vec<BuiltSink>,
    /// The spec it was built from.
    pub spec: PipelineSpec,
}

impl BuiltPipeline {
    /// The sink with id `id`.
    pub fn sink(&self, id: &str) -> Option<&BuiltSink> {
        self.sinks.iter().find(|sink| sink.id == id)
    }
}

/// Every plugin a deployment can build, by name.
#[derive(Clone, Default)]
pub struct PluginRegistry {
    transforms: BTreeMap<&'static str, TransformFactory>,
    sinks: BTreeMap<&'static str, SinkFactory>,
}

impl std::fmt::Debug for PluginRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRegistry")
            .field("transforms", &self.transforms.keys().collect::<Vec<_>>())
            .field("sinks", &self.sinks.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl PluginRegistry {
    /// A registry with the built-in transforms (part 1: [`Passthrough`]); sinks are added by
    /// the crates that do their I/O.
    pub fn with_builtin_transforms() -> Self {
        let mut registry = Self::default();
        registry.register_transform(Passthrough::NAME, |_| Ok(Arc::new(Passthrough)));
        registry
    }

    /// Registers a transform factory under `name`.
    pub fn register_transform(
        &mut self,
        name: &'static str,
        factory: impl Fn(&Value) -> Result<Arc<dyn TransformPlugin>, PluginConfigError>
            + Send
            + Sync
            + 'static,
    ) {
        self.transforms.insert(name, Arc::new(factory));
    }

    /// Registers a sink factory under `name`.
    pub fn register_sink(
        &mut self,
        name: &'static str,
        factory: impl Fn(&Value) -> Result<Arc<dyn SinkPlugin>, PluginConfigError>
            + Send
            + Sync
            + 'static,
    ) {
        self.sinks.insert(name, Arc::new(factory));
    }

    /// Names of the registered sinks.
    pub fn sink_names(&self) -> Vec<&'static str> {
        self.sinks.keys().copied().collect()
    }

    /// Reads a pipeline from JSON, naming the field it refuses.
    pub fn parse(&self, json: &Value) -> Result<BuiltPipeline, SpecError> {
        let spec: PipelineSpec = serde_json::from_value(json.clone()).map_err(|err| SpecError {
            field: "plugins".into(),
            message: err.to_string(),
        })?;
        self.build(&spec)
    }

    /// Builds `spec`: every plugin known, every config accepted, sink ids unique.
    pub fn build(&self, spec: &PipelineSpec) -> Result<BuiltPipeline, SpecError> {
        let refused = |list: &str, index: usize, err: PluginConfigError| SpecError {
            field: if err.field.is_empty() {
                format!("plugins.{list}[{index}].config")
            } else {
                format!("plugins.{list}[{index}].config.{}", err.field)
            },
            message: err.message,
        };
        let mut transforms = Vec::new();
        for (index, plugin) in spec.plugins.transform.iter().enumerate() {
            let factory = self
                .transforms
                .get(plugin.name.as_str())
                .ok_or_else(|| SpecError {
                    field: format!("plugins.transform[{index}].name"),
                    message: format!(
                        "unknown transform {:?}; known: {}",
                        plugin.name,
                        self.transforms
                            .keys()
                            .copied()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                })?;
            if plugin.retry.is_some() || plugin.id.is_some() {
                return Err(SpecError {
                    field: format!("plugins.transform[{index}]"),
                    message: "id and retry are settings of sinks".into(),
                });
            }
            transforms
                .push(factory(&plugin.config).map_err(|err| refused("transform", index, err))?);
        }
        if spec.plugins.sinks.is_empty() {
            return Err(SpecError {
                field: "plugins.sinks".into(),
                message: "a pipeline needs at least one sink".into(),
            });
        }
        let mut ids = HashSet::new();
        let mut sinks = Vec::new();
        for (index, plugin) in spec.plugins.sinks.iter().enumerate() {
            let factory = self
                .sinks
                .get(plugin.name.as_str())
                .ok_or_else(|| SpecError {
                    field: format!("plugins.sinks[{index}].name"),
                    message: format!(
                        "unknown sink {:?}; known: {}",
                        plugin.name,
                        self.sink_names().join(", ")
                    ),
                })?;
            let id = plugin.id.clone().unwrap_or_else(|| plugin.name.clone());
            let valid_id = !id.is_empty()
                && id.len() <= 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid_id {
                return Err(SpecError {
                    field: format!("plugins.sinks[{index}].id"),
                    message: "a sink id is 1 to 64 of A-Z, a-z, 0-9, '_' or '-'".into(),
                });
            }
            if !ids.insert(id.clone()) {
                return Err(SpecError {
                    field: format!("plugins.sinks[{index}].id"),
                    message: format!("sink id {id:?} is used twice; give each sink its own id"),
                });
            }
            let retry = plugin.retry.unwrap_or_default();
            if retry.max_attempts == 0 || retry.initial_backoff_ms == 0 {
                return Err(SpecError {
                    field: format!("plugins.sinks[{index}].retry"),
                    message: "max_attempts and initial_backoff_ms must be at least 1".into(),
                });
            }
            let built = factory(&plugin.config).map_err(|err| refused("sinks", index, err))?;
            sinks.push(BuiltSink {
                id,
                plugin: built,
                retry,
            });
        }
        Ok(BuiltPipeline {
            transforms,
            sinks,
            spec: spec.clone(),
        })
    }
}

/// The pipeline of a tenant that configured none: its events archived in `events_raw`.
pub fn default_spec() -> PipelineSpec {
    PipelineSpec {
        plugins: PluginsSpec {
            transform: Vec::new(),
            sinks: vec![PluginRef {
                name: "postgres_sink".into(),
                id: None,
                config: serde_json::json!({"table": "events_raw"}),
                retry: None,
            }],
        },
    }
}

/// The transform that changes nothing (part 1's only built-in; part 2 adds the real ones).
#[derive(Debug, Clone, Copy)]
pub struct Passthrough;

impl Passthrough {
    /// Its registry name.
    pub const NAME: &'static str = "passthrough";
}

#[async_trait]
impl TransformPlugin for Passthrough {
    fn info(&self) -> PluginInfo {
        PluginInfo {
            name: Self::NAME,
            version: "1.0.0",
        }
    }

    async fn process(&self, event: CanonicalEvent, _: &PluginContext) -> TransformOutcome {
        TransformOutcome::Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::plugin::SinkOutcome;

    #[derive(Debug)]
    struct Null;

    #[async_trait]
    impl SinkPlugin for Null {
        fn info(&self) -> PluginInfo {
            PluginInfo {
                name: "null_sink",
                version: "0.0.1",
            }
        }
        async fn send(&self, _: &CanonicalEvent, _: &PluginContext) -> SinkOutcome {
            SinkOutcome::Ok
        }
    }

    fn registry() -> PluginRegistry {
        let mut registry = PluginRegistry::with_builtin_transforms();
        registry.register_sink("null_sink", |config| {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            #[allow(dead_code)]
            struct Config {
                #[serde(default)]
                level: u8,
            }
            let _: Config = PluginConfigError::parse(config)?;
            Ok(Arc::new(Null))
        });
        registry
    }

    #[test]
    fn the_seeds_shape_builds() {
        let built = registry()
            .parse(&json!({"plugins": {"transform": [{"name": "passthrough"}],
                "sinks": [{"name": "null_sink"}, {"name": "null_sink", "id": "second",
                    "retry": {"max_attempts": 3}}]}}))
            .unwrap();
        assert_eq!(built.transforms.len(), 1);
        assert_eq!(built.sinks[1].id, "second");
        assert_eq!(built.sinks[1].retry.max_attempts, 3);
        assert_eq!(built.sinks[1].retry.initial_backoff_ms, 1_000);
    }

    #[test]
    fn a_bad_pipeline_names_its_bad_field() {
        let field = |json: Value| registry().parse(&json).unwrap_err().field;
        assert_eq!(field(json!({"plugins": {"sinks": []}})), "plugins.sinks");
        assert_eq!(
            field(json!({"plugins": {"sinks": [{"name": "s3_sink"}]}})),
            "plugins.sinks[0].name"
        );
        assert_eq!(
            field(
                json!({"plugins": {"transform": [{"name": "geoip"}], "sinks": [{"name": "null_sink"}]}})
            ),
            "plugins.transform[0].name"
        );
        assert_eq!(
            field(json!({"plugins": {"sinks": [{"name": "null_sink"}, {"name": "null_sink"}]}})),
            "plugins.sinks[1].id"
        );
        assert_eq!(
            field(json!({"plugins": {"sinks": [{"name": "null_sink", "config": {"level": "x"}}]}})),
            "plugins.sinks[0].config"
        );
        assert_eq!(field(json!({"plugin": {}})), "plugins");
    }

    #[test]
    fn retry_delays_grow_and_stay_capped() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_backoff_ms: 100,
            max_backoff_ms: 1_000,
        };
        let first = policy.delay_after(1).as_millis();
        assert!((100..=125).contains(&first), "{first}");
        let third = policy.delay_after(3).as_millis();
        assert!((400..=500).contains(&third), "{third}");
        assert!(policy.delay_after(30).as_millis() <= 1_000);
    }
}
