//! Drawing the [`Model`]: pure, so tests draw on ratatui's `TestBackend` and read the text.
//!
//! One column below 120 columns, two above (CPU and memory left, network and the other
//! sections right). Each panel asks for a minimum and a preferred height; panels get their
//! minimum in order, then what is left up to their preference, and a panel that does not
//! fit at all is left out (the terminal is smaller than 80×24, where everything fits).

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Gauge, Paragraph, Sparkline};
use ratatui::Frame;

use super::model::{Cpu, Link, Memory, Model, Network, Section, Usage};
use crate::encode::humanize;

/// Width of one per-CPU cell, `" 15 ████▌    3.2 "`: number, bar, percent, gap.
const CPU_CELL: u16 = 19;
/// Sparkline rows wanted when there is room.
const SPARK_ROWS: u16 = 3;
/// From this width on, two columns.
const TWO_COLUMNS: u16 = 120;

pub fn draw(frame: &mut Frame, model: &Model) {
    let [title, body] =
        Layout::vertical([Constraint::Length(1), Constraint::Fill(1)]).areas(frame.area());
    frame.render_widget(Paragraph::new(title_line(model)), title);
    let Some(snapshot) = &model.snapshot else {
        let waiting = match &model.link {
            Link::Connecting => format!("connecting to {}…", model.addr),
            Link::Connected => {
                "connected; waiting for the first snapshot (one comes every interval)".into()
            }
            Link::Disconnected(why) => format!("disconnected, retrying: {why}"),
        };
        frame.render_widget(Paragraph::new(waiting), body);
        return;
    };
    let mut panels = Vec::new();
    if let Some(cpu) = &snapshot.cpu {
        panels.push(Panel::Cpu(cpu));
    }
    if let Some(memory) = &snapshot.memory {
        panels.push(Panel::Memory(memory));
    }
    let left = panels.len();
    if let Some(network) = &snapshot.network {
        panels.push(Panel::Network(network));
    }
    panels.extend(snapshot.other.iter().map(Panel::Other));
    if body.width >= TWO_COLUMNS && left > 0 && left < panels.len() {
        let [l, r] =
            Layout::horizontal([Constraint::Percentage(50), Constraint::Fill(1)]).areas(body);
        let right = panels.split_off(left);
        stack(frame, l, &panels, model);
        stack(frame, r, &right, model);
    } else {
        stack(frame, body, &panels, model);
    }
}

fn title_line(model: &Model) -> Line<'static> {
    let mut spans = vec![
        Span::from(" pocketses watch ").bold(),
        Span::from(model.addr.clone()),
        Span::from("  "),
    ];
    spans.push(match &model.link {
        Link::Connecting => Span::from("connecting").yellow(),
        Link::Connected => Span::from("connected").green(),
        Link::Disconnected(why) => Span::from(format!("disconnected, retrying ({why})"))
            .red()
            .bold(),
    });
    if let Some(time) = model.snapshot.as_ref().and_then(|s| s.timestamp.as_ref()) {
        spans.push(Span::from(format!("  {time}")));
    }
    if let Some(notice) = &model.notice {
        spans.push(Span::from(format!("  {notice}")).yellow());
    }
    spans.push(Span::from("  q quits").dim());
    Line::from(spans)
}

enum Panel<'a> {
    Cpu(&'a Cpu),
    Memory(&'a Memory),
    Network(&'a Network),
    Other(&'a Section),
}

impl Panel<'_> {
    fn title(&self) -> String {
        match self {
            Panel::Cpu(cpu) => match (cpu.count, cpu.frequency_mhz) {
                (Some(n), Some(mhz)) => format!(" CPU: {n} online, {mhz:.0} MHz "),
                (Some(n), None) => format!(" CPU: {n} online "),
                _ => " CPU ".into(),
            },
            Panel::Memory(_) => " Memory ".into(),
            Panel::Network(network) => format!(
                " Network: received {}, sent {} in all ",
                network.recv, network.sent
            ),
            Panel::Other(section) => format!(" {} ", section.name),
        }
    }

    /// (minimum, preferred) height inside the panel's one-line title, at `width`.
    fn heights(&self, width: u16) -> (u16, u16) {
        match self {
            Panel::Cpu(cpu) => {
                let n = cpu.per_cpu.len() as u16;
                let grid = n.div_ceil((width / CPU_CELL).max(1));
                let strip = n.div_ceil(width.max(1));
                (1 + 1 + strip, 1 + SPARK_ROWS + grid)
            }
            Panel::Memory(_) => (2, 2),
            Panel::Network(network) => (2, 1 + network.interfaces.len().max(1) as u16),
            Panel::Other(section) => (1, section.lines.len().max(1) as u16),
        }
    }

    fn draw(&self, frame: &mut Frame, area: Rect, model: &Model) {
        let block = Block::new()
            .borders(Borders::TOP)
            .title(self.title())
            .title_style(Style::new().add_modifier(Modifier::BOLD));
        let inner = block.inner(area);
        frame.render_widget(block, area);
        match self {
            Panel::Cpu(cpu) => draw_cpu(frame, inner, cpu, model),
            Panel::Memory(memory) => draw_memory(frame, inner, memory),
            Panel::Network(network) => draw_network(frame, inner, network),
            Panel::Other(section) => draw_section(frame, inner, section),
        }
    }
}

/// Gives each panel its minimum, in order, then the rest up to each one's preference.
fn stack(frame: &mut Frame, area: Rect, panels: &[Panel], model: &Model) {
    let wants: Vec<(u16, u16)> = panels
        .iter()
        .map(|p| p.heights(area.width))
        .map(|(min, want)| (min + 1, want + 1))
        .collect();
    let mut heights = vec![0u16; panels.len()];
    let mut left = area.height;
    for (height, (min, _)) in heights.iter_mut().zip(&wants) {
        if *min > left {
            break;
        }
        *height = *min;
        left -= min;
    }
    // A row at a time to each panel that wants more, so many CPUs do not starve the
    // network table.
    let mut grew = true;
    while left > 0 && grew {
        grew = false;
        for (height, (_, want)) in heights.iter_mut().zip(&wants) {
            if *height > 0 && *height < *want && left > 0 {
                *height += 1;
                left -= 1;
                grew = true;
            }
        }
    }
    let mut y = area.y;
    for (panel, height) in panels.iter().zip(heights) {
        if height > 0 {
            panel.draw(frame, Rect::new(area.x, y, area.width, height), model);
            y += height;
        }
    }
}

fn draw_cpu(frame: &mut Frame, area: Rect, cpu: &Cpu, model: &Model) {
    let n = cpu.per_cpu.len() as u16;
    let columns = (area.width / CPU_CELL).max(1);
    let grid = n.div_ceil(columns);
    // The per-CPU bars as cells when they fit under a one-row sparkline, else one
    // character per CPU.
    let (compact, spark_rows) = if area.height > grid + 1 {
        (false, area.height - 1 - grid)
    } else {
        let strip = n.div_ceil(area.width.max(1));
        (
            true,
            area.height.saturating_sub(1 + strip).clamp(1, SPARK_ROWS),
        )
    };
    let [overall, spark, bars] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(spark_rows),
        Constraint::Fill(1),
    ])
    .areas(area);
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::from("overall "),
            Span::from(format!("{:.1}%", cpu.overall))
                .style(load_style(cpu.overall))
                .bold(),
            Span::from(match model.cpu_history.len() {
                1 => "  history: 1 snapshot".to_string(),
                n => format!("  history: {n} snapshots, newest right"),
            })
            .dim(),
        ])),
        overall,
    );
    // The newest readings that fit, in tenths of a percent, on a 0–100% scale.
    let skip = model.cpu_history.len().saturating_sub(spark.width as usize);
    let history: Vec<u64> = (model.cpu_history.iter().skip(skip))
        .map(|p| (p * 10.0).round().clamp(0.0, 1000.0) as u64)
        .collect();
    frame.render_widget(
        Sparkline::default()
            .data(&history)
            .max(1000)
            .style(Style::new().fg(Color::Cyan)),
        spark,
    );
    let lines: Vec<Line> = if compact {
        let chars: Vec<Span> = (cpu.per_cpu.iter())
            .map(|(_, p)| Span::from(eighths(*p, 1)).style(load_style(*p)))
            .collect();
        chars
            .chunks(bars.width.max(1) as usize)
            .map(|row| Line::from(row.to_vec()))
            .collect()
    } else {
        let bar_width = (CPU_CELL - 11) as usize;
        cpu.per_cpu
            .chunks(columns as usize)
            .map(|row| {
                Line::from(
                    row.iter()
                        .flat_map(|(id, p)| {
                            [
                                Span::from(format!("{id:>3} ")),
                                Span::from(format!("{:<bar_width$}", eighths(*p, bar_width)))
                                    .style(load_style(*p)),
                                Span::from(format!("{p:>6.1} ")),
                            ]
                        })
                        .collect::<Vec<_>>(),
                )
            })
            .collect()
    };
    frame.render_widget(Paragraph::new(lines), bars);
}

/// `percent` of `width` cells as a bar in eighths of a cell (one cell: a level from ▁ to █).
fn eighths(percent: f64, width: usize) -> String {
    const PARTS: [char; 9] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉', '█'];
    const LEVELS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let total = ((percent.clamp(0.0, 100.0) / 100.0) * (width * 8) as f64).round() as usize;
    if width == 1 {
        return LEVELS[total].to_string();
    }
    let mut bar = "█".repeat(total / 8);
    if total % 8 > 0 {
        bar.push(PARTS[total % 8]);
    }
    bar
}

fn load_style(percent: f64) -> Style {
    Style::new().fg(match percent {
        p if p >= 90.0 => Color::Red,
        p if p >= 60.0 => Color::Yellow,
        _ => Color::Green,
    })
}

fn draw_memory(frame: &mut Frame, area: Rect, memory: &Memory) {
    let rows = Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).split(area);
    for ((name, usage), row) in [("mem ", &memory.ram), ("swap", &memory.swap)]
        .into_iter()
        .zip(rows.iter())
    {
        let [label, gauge] =
            Layout::horizontal([Constraint::Length(5), Constraint::Fill(1)]).areas(*row);
        frame.render_widget(Paragraph::new(name), label);
        frame.render_widget(usage_gauge(usage), gauge);
    }
}

fn usage_gauge(usage: &Usage) -> Gauge<'static> {
    Gauge::default()
        .ratio((usage.used_percent / 100.0).clamp(0.0, 1.0))
        .label(format!(
            "{:.1}% used of {}, {} available",
            usage.used_percent, usage.total, usage.available
        ))
        .gauge_style(load_style(usage.used_percent).bg(Color::DarkGray))
}

fn draw_network(frame: &mut Frame, area: Rect, network: &Network) {
    let raw = network.interfaces.iter().any(|i| i.rx_bytes.is_some());
    let name_width = (network.interfaces.iter())
        .map(|i| i.name.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(9, 16);
    let header = if raw {
        format!(
            "{:<name_width$} {:>10} {:>10} {:>9} {:>9}  IPv4",
            "interface", "receive/s", "send/s", "received", "sent"
        )
    } else {
        format!(
            "{:<name_width$} IPv4   (per-interface rates: run the agent with --format raw)",
            "interface"
        )
    };
    let mut lines = vec![Line::from(header).dim()];
    let room = area.height.saturating_sub(1) as usize;
    let shown = if network.interfaces.len() > room {
        room.saturating_sub(1)
    } else {
        room
    };
    for interface in network.interfaces.iter().take(shown) {
        let name: String = interface.name.chars().take(name_width).collect();
        let addresses = interface.addresses.join(" ");
        lines.push(Line::from(if raw {
            let rate =
                |r: Option<f64>| r.map_or("–".into(), |r| humanize::bytes(r as u64) + "/s");
            let total = |b: Option<u64>| b.map_or("–".into(), humanize::bytes);
            format!(
                "{name:<name_width$} {:>10} {:>10} {:>9} {:>9}  {addresses}",
                rate(interface.rx_per_second),
                rate(interface.tx_per_second),
                total(interface.rx_bytes),
                total(interface.tx_bytes),
            )
        } else {
            format!("{name:<name_width$} {addresses}")
        }));
    }
    if shown < network.interfaces.len() {
        let more = network.interfaces.len() - shown;
        lines.push(Line::from(format!("… {more} more interfaces")).dim());
    }
    frame.render_widget(Paragraph::new(lines), area);
}

fn draw_section(frame: &mut Frame, area: Rect, section: &Section) {
    let room = area.height as usize;
    let shown = if section.lines.len() > room {
        room.saturating_sub(1)
    } else {
        room
    };
    let key_width = (section.lines.iter())
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0)
        .min(area.width as usize / 2);
    let mut lines: Vec<Line> = (section.lines.iter().take(shown))
        .map(|(key, value)| {
            Line::from(vec![
                Span::from(format!("{key:<key_width$} ")).dim(),
                Span::from(value.clone()),
            ])
        })
        .collect();
    if shown < section.lines.len() {
        let more = section.lines.len() - shown;
        lines.push(Line::from(format!("… {more} more")).dim());
    }
    frame.render_widget(Paragraph::new(lines), area);
}
