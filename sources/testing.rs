//! Test-only sources (feature `test-plugins`, which only `cargo test` turns on): sections
//! that panic where a real source's must not, a source that blocks, and one with a setting,
//! so the integration tests can check what the running agent does then.

use async_trait::async_trait;

use crate::model::{Format, Section};
use crate::plugin::{Source, SourcePlugin};
use crate::settings::{Declared, DefaultValue, Kind, Setting};

inventory::submit! {
    SourcePlugin {
        name: "test-view-panics",
        aliases: &[],
        description: "test only: a section whose view panics",
        on_by_default: None,
        settings: Declared::NONE,
        build: |_| Ok(Box::new(Sections(|| Box::new(ViewPanics)))),
    }
}

inventory::submit! {
    SourcePlugin {
        name: "test-drop-panics",
        aliases: &[],
        description: "test only: a section that panics when dropped, ending the collector",
        on_by_default: None,
        settings: Declared::NONE,
        build: |_| Ok(Box::new(Sections(|| Box::new(DropPanics)))),
    }
}

inventory::submit! {
    SourcePlugin {
        name: "test-slow",
        aliases: &[],
        description: "test only: every second call blocks for 500 ms; sections count the calls",
        on_by_default: None,
        settings: Declared::NONE,
        build: |_| Ok(Box::new(Slow { calls: 0 })),
    }
}

inventory::submit! {
    SourcePlugin {
        name: "test-echo",
        aliases: &[],
        description: "test only: its section is its setting test-echo.text",
        on_by_default: None,
        settings: Declared::typed::<Echo>(&[Setting {
            key: "test-echo.text",
            kind: Kind::Text,
            default: DefaultValue::Text("hello"),
            help: "What the test-echo source's section says",
        }]),
        build: |context| Ok(Box::new(context.settings.settings::<Echo>().map_err(anyhow::Error::msg)?)),
    }
}

inventory::submit! {
    SourcePlugin {
        name: "test-counter",
        aliases: &[],
        description: "test only: its section counts its calls, to show that it kept its state",
        on_by_default: None,
        settings: Declared::NONE,
        build: |_| Ok(Box::new(Counter { calls: 0 })),
    }
}

/// A source whose state is the number of times it was called.
struct Counter {
    calls: u32,
}

#[async_trait]
impl Source for Counter {
    async fn collect(&mut self) -> anyhow::Result<Box<dyn Section>> {
        self.calls += 1;
        Ok(Box::new(Calls(self.calls)))
    }
}

/// A source built from its own settings: its section is its text.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Echo {
    text: String,
}

#[async_trait]
impl Source for Echo {
    async fn collect(&mut self) -> anyhow::Result<Box<dyn Section>> {
        Ok(Box::new(self.clone()))
    }
}

impl Section for Echo {
    fn view(&self, _: Format) -> Box<dyn erased_serde::Serialize + '_> {
        Box::new(&self.text)
    }
}

/// A source that blocks every second call, the way a hung filesystem would, to show the
/// deadline at work: its section is the number of calls made so far, so a consumer can see
/// that a call still out is never repeated.
struct Slow {
    calls: u32,
}

#[async_trait]
impl Source for Slow {
    async fn collect(&mut self) -> anyhow::Result<Box<dyn Section>> {
        self.calls += 1;
        if self.calls % 2 == 0 {
            // Blocking work goes to a blocking thread, as the Source docs ask.
            let blocked = || std::thread::sleep(std::time::Duration::from_millis(500));
            tokio::task::spawn_blocking(blocked).await?;
        }
        Ok(Box::new(Calls(self.calls)))
    }
}

struct Calls(u32);

impl Section for Calls {
    fn view(&self, _: Format) -> Box<dyn erased_serde::Serialize + '_> {
        Box::new(self.0)
    }
}

/// A source whose every collection is a new section from its function.
struct Sections(fn() -> Box<dyn Section>);

#[async_trait]
impl Source for Sections {
    async fn collect(&mut self) -> anyhow::Result<Box<dyn Section>> {
        Ok((self.0)())
    }
}

struct ViewPanics;

impl Section for ViewPanics {
    fn view(&self, _: Format) -> Box<dyn erased_serde::Serialize + '_> {
        panic!("test-view-panics panics in view, as asked");
    }
}

/// The collector contains panics in a source's collection and its section's encoding, but
/// not in dropping a section (nothing that real sections do): this one stands for whatever
/// else could still end the ticking task.
struct DropPanics;

impl Section for DropPanics {
    fn view(&self, _: Format) -> Box<dyn erased_serde::Serialize + '_> {
        Box::new(0)
    }
}

impl Drop for DropPanics {
    fn drop(&mut self) {
        panic!("test-drop-panics panics when dropped, as asked");
    }
}
