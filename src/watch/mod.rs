//! `pocketses watch`: a live terminal view of a TCP publisher.
//!
//! [`client`] subscribes on a thread of its own, [`model`] turns its lines into what is
//! shown, [`view`] draws that with ratatui; [`run`] ties them to the terminal.

pub mod client;
pub mod model;
pub mod view;

use std::io::IsTerminal;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::Duration;

use anyhow::{bail, Context};
use crossterm::event::{self, Event as TermEvent, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::DefaultTerminal;

use client::{Client, Event};
use model::Model;

/// The publisher `pocketses watch` subscribes to when given none: the default agent's.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8888";

/// How often the view looks for news from the publisher between keys.
const TICK: Duration = Duration::from_millis(100);

/// Draws the live view of the publisher at `addr` (`host:port`, `[::1]:8888`, or a bare
/// host for port 8888) until `q`, Esc or Ctrl-C. The terminal is restored on return and on
/// panic.
pub fn run(addr: &str) -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() {
        bail!("pocketses watch draws on a terminal and stdout is not one (for the JSON lines: nc HOST PORT)");
    }
    let addr = client::with_port(addr);
    let (events, news) = mpsc::channel();
    let _client = Client::start(&addr, events);
    let mut model = Model::new(&addr);
    // Raw mode, the alternate screen, and a panic hook that restores both.
    let mut terminal = match ratatui::try_init() {
        Ok(terminal) => terminal,
        Err(e) => {
            ratatui::restore();
            return Err(e).context("setting up the terminal");
        }
    };
    let result = show(&mut terminal, &mut model, &news);
    ratatui::restore();
    result
}

fn show(
    terminal: &mut DefaultTerminal,
    model: &mut Model,
    news: &Receiver<Event>,
) -> anyhow::Result<()> {
    let mut changed = true;
    loop {
        loop {
            match news.try_recv() {
                Ok(Event::Connected) => model.connected(),
                Ok(Event::Line(line)) => model.line(&line),
                Ok(Event::Disconnected(why)) => model.disconnected(why),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => bail!("the subscription thread ended"),
            }
            changed = true;
        }
        if changed {
            terminal.draw(|frame| view::draw(frame, model))?;
            changed = false;
        }
        if event::poll(TICK)? {
            match event::read()? {
                TermEvent::Key(key) if key.kind == KeyEventKind::Press => {
                    let ctrl_c = key.code == KeyCode::Char('c')
                        && key.modifiers.contains(KeyModifiers::CONTROL);
                    if ctrl_c || matches!(key.code, KeyCode::Char('q' | 'Q') | KeyCode::Esc) {
                        return Ok(());
                    }
                }
                TermEvent::Resize(..) => changed = true,
                _ => {}
            }
        }
    }
}
