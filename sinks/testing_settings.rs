//! A test-only sink (feature `test-plugins`) with settings of its own, declared here and
//! nowhere else: the integration tests find them in `--help`, `--list`, `--check`, flag
//! and snap validation, and in what the sink logs, which proves that a plugin with settings
//! is one file.

use async_trait::async_trait;
use tracing::info;

use crate::encode::Frame;
use crate::plugin::{Sink, SinkPlugin};
use crate::settings::{Declared, DefaultValue, Kind, PluginConfig, Setting};

inventory::submit! {
    SinkPlugin {
        name: "test-settings",
        aliases: &[],
        description: "test only: logs its two settings with the seq of each snapshot",
        on_by_default: None,
        settings: Declared::typed::<Greeter>(&[
            Setting {
                key: "test.greeting",
                kind: Kind::Text,
                default: DefaultValue::Text("hello"),
                help: "What the test sink says",
            },
            Setting {
                key: "test.count",
                kind: Kind::Whole { min: 1, max: 9 },
                default: DefaultValue::Text("3"),
                help: "How many times the test sink says it",
            },
        ]),
        preflight: |config| config.settings::<Greeter>().map(drop),
        build: |config| {
            let greeter = config.settings::<Greeter>();
            Box::pin(async move {
                Ok(Box::new(greeter.map_err(anyhow::Error::msg)?) as Box<dyn Sink>)
            })
        },
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Greeter {
    greeting: String,
    count: u8,
}

#[async_trait]
impl Sink for Greeter {
    async fn publish(&mut self, frame: &Frame) -> anyhow::Result<()> {
        let said = vec![self.greeting.as_str(); usize::from(self.count)].join(" ");
        info!("test-settings says {said:?} at seq={}", frame.seq);
        Ok(())
    }

    async fn reconfigure(&mut self, config: &PluginConfig) -> anyhow::Result<bool> {
        *self = config.settings().map_err(anyhow::Error::msg)?;
        Ok(true)
    }
}
