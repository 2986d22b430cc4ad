//! [`Stats::to_dot`]: the pipeline's graph in Graphviz's DOT language, each node with its
//! numbers and the bottleneck highlighted. The text is written here; rendering it is left to
//! Graphviz (`dot -Tsvg`), which backflow does not depend on.
//!
//! # Examples
//!
//! ```
//! use backflow::Pipeline;
//!
//! let pipeline = Pipeline::<u32>::builder().stage("parse", || |x: u32| x).sink(|_| {}).build()?;
//! let dot = pipeline.drain()?.stats().to_dot();
//! assert!(dot.starts_with("digraph backflow {"));
//! assert!(dot.contains("input -> stage_0;"));
//! assert!(dot.contains("stage_0 -> sink_0;"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt::Write as _;

use super::graph::{Carries, Edge, Vertex};
use super::{Bottleneck, Stats, nanos, percent, rate};

/// The fill of a node in front of which pressure is on.
const PRESSURE_FILL: &str = "#ffe9b3";
/// The outline and fill of the bottleneck.
const BOTTLENECK_LINE: &str = "#c62828";
const BOTTLENECK_FILL: &str = "#ffd6d6";

impl Stats {
    /// The pipeline's graph in Graphviz's DOT language: the input, every stage, every fan (a
    /// branching point: `broadcast` or `route`) and every sink as a node, and an edge for
    /// each node that feeds another, labelled `main`, `copy` (a broadcast's branch), `match`
    /// (a route's branch) or `merge` (a branch merging back into the main line).
    ///
    /// Each stage's node shows its name and workers, its throughput (over the recent window
    /// and since the start), its queue fill, whether pressure is on in front of it (then the
    /// node is filled amber) and its busy share; each sink's, its throughput, what it has
    /// delivered and the end-to-end p99 latency (when an item was sampled). The [`bottleneck`](Self::bottleneck) (a stage, the sink it waits on, or the
    /// input) is outlined and filled red, with the reason. Node names are `input`,
    /// `stage_<n>`, `fan_<n>` and `sink_<n>`, numbered in the order the pipeline was defined;
    /// stage and sink names appear only in labels, escaped, so any name is safe.
    ///
    /// Render it with Graphviz: `dot -Tsvg pipeline.dot -o pipeline.svg`.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow::Pipeline;
    ///
    /// let pipeline = Pipeline::<i32>::builder()
    ///     .stage("parse", || |x: i32| x)
    ///     .branch("negatives", |x: &i32| *x < 0, |b| b.sink(|_| {}))
    ///     .stage("double", || |x: i32| x * 2)
    ///     .sink(|_| {})
    ///     .build()?;
    /// pipeline.input().push_iter([1, -2, 3])?;
    /// let dot = pipeline.drain()?.stats().to_dot();
    /// assert!(dot.contains("stage_0 -> fan_0;"));
    /// assert!(dot.contains(r#"fan_0 -> sink_1 [label="match"];"#));
    /// assert!(dot.contains(r#"fan_0 -> stage_1 [label="main"];"#));
    /// assert!(dot.contains(r#"label="negatives"#));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn to_dot(&self) -> String {
        let edges = self.graph.edges(!self.stages.is_empty());
        let bottleneck = self.bottleneck();
        let highlighted = bottleneck.as_ref().map(|b| self.vertex_of(b, &edges));
        let mut out = String::with_capacity(2048);
        out.push_str("digraph backflow {\n");
        out.push_str("  graph [rankdir=LR, labelloc=t, fontname=Helvetica, fontsize=12, ");
        out.push_str("label=");
        let title = format!("backflow pipeline, {:.1} s", self.elapsed.as_secs_f64());
        write_quoted(&mut out, &title);
        out.push_str("];\n");
        out.push_str(
            "  node [shape=box, style=\"rounded,filled\", fillcolor=white, fontname=Helvetica, \
             fontsize=11];\n",
        );
        out.push_str("  edge [fontname=Helvetica, fontsize=10];\n");

        let mut nodes = vec![(Vertex::Input, self.input_label(), "cds", None)];
        for (index, stage) in self.stages.iter().enumerate() {
            let mut label = if stage.workers > 1 {
                format!("{} ×{}", stage.name, stage.workers)
            } else {
                stage.name.clone()
            };
            let _ = write!(
                label,
                "\n{} now, {} avg\nqueue {}/{} ({})\npressure {}\nbusy {}",
                rate(stage.throughput_recent),
                rate(stage.throughput_total),
                stage.queue_len,
                stage.queue_capacity,
                percent(stage.utilization()),
                if stage.pressure_on { "on" } else { "off" },
                percent(stage.time.busy),
            );
            let fill = stage.pressure_on.then_some(PRESSURE_FILL);
            nodes.push((Vertex::Stage(index), label, "box", fill));
        }
        for (fan, &broadcast) in self.graph.fans().iter().enumerate() {
            let label = if broadcast { "broadcast" } else { "route" };
            nodes.push((Vertex::Fan(fan), label.to_string(), "diamond", None));
        }
        for (index, sink) in self.sinks.iter().enumerate() {
            let mut label = format!(
                "{}\n{} now, {} avg\ndelivered {}",
                sink.name,
                rate(sink.throughput_recent),
                rate(sink.throughput_total),
                sink.delivered,
            );
            // Latency is sampled: a sink that saw no sampled item has none to show.
            if sink.latency.max > 0 {
                let _ = write!(label, "\np99 latency {}", nanos(sink.latency.p99));
            }
            nodes.push((Vertex::Sink(index), label, "ellipse", None));
        }

        for (vertex, mut label, shape, fill) in nodes {
            let is_bottleneck = highlighted == Some(vertex);
            if let (true, Some(bottleneck)) = (is_bottleneck, &bottleneck) {
                let _ = write!(label, "\nbottleneck: {}", reason(bottleneck));
            }
            let _ = write!(out, "  {} [label=", id(vertex));
            write_quoted(&mut out, &label);
            let _ = write!(out, ", shape={shape}");
            if is_bottleneck {
                let _ = write!(
                    out,
                    ", color=\"{BOTTLENECK_LINE}\", penwidth=3, fillcolor=\"{BOTTLENECK_FILL}\""
                );
            } else if let Some(fill) = fill {
                let _ = write!(out, ", fillcolor=\"{fill}\"");
            }
            out.push_str("];\n");
        }

        for edge in &edges {
            let _ = write!(out, "  {} -> {}", id(edge.from), id(edge.to));
            let label = match (edge.carries, edge.from) {
                (Carries::All, _) => None,
                (Carries::Main, _) => Some("main"),
                (Carries::Branch, Vertex::Fan(fan))
                    if self.graph.fans().get(fan) == Some(&true) =>
                {
                    Some("copy")
                }
                (Carries::Branch, _) => Some("match"),
                (Carries::Merge, _) => Some("merge"),
            };
            if let Some(label) = label {
                let _ = write!(out, " [label=\"{label}\"]");
            }
            out.push_str(";\n");
        }
        out.push_str("}\n");
        out
    }

    /// The input's label: what it has put into the first stage.
    fn input_label(&self) -> String {
        match self.stages.first() {
            Some(first) => format!("input\n{} items", first.accounting.received),
            None => "input".to_string(),
        }
    }

    /// The node `bottleneck` names: the stage, the sink the last stage waits on (the sink
    /// it feeds, else the main one), or the input.
    fn vertex_of(&self, bottleneck: &Bottleneck, edges: &[Edge]) -> Vertex {
        let stage = |name: &str| self.stages.iter().position(|s| s.name == name);
        match bottleneck {
            Bottleneck::Stage { name, .. } => stage(name).map_or(Vertex::Input, Vertex::Stage),
            Bottleneck::Sink { last, .. } => stage(last)
                .and_then(|last| {
                    edges.iter().find_map(|edge| match (edge.from, edge.to) {
                        (Vertex::Stage(from), Vertex::Sink(sink)) if from == last => {
                            Some(Vertex::Sink(sink))
                        }
                        _ => None,
                    })
                })
                .unwrap_or(Vertex::Sink(0)),
            Bottleneck::Input { .. } => Vertex::Input,
        }
    }
}

/// Why the bottleneck is one, in a few words.
fn reason(bottleneck: &Bottleneck) -> String {
    match bottleneck {
        Bottleneck::Stage { busy, .. } => format!("busy {}", percent(*busy)),
        Bottleneck::Sink { last, backpressured } => {
            format!("{last} waits on it {}", percent(*backpressured))
        }
        Bottleneck::Input { busiest } => {
            format!("stages mostly idle (busiest {})", percent(*busiest))
        }
    }
}

/// A node's name in the DOT text.
fn id(vertex: Vertex) -> String {
    match vertex {
        Vertex::Input => "input".to_string(),
        Vertex::Stage(index) => format!("stage_{index}"),
        Vertex::Fan(fan) => format!("fan_{fan}"),
        Vertex::Sink(index) => format!("sink_{index}"),
    }
}

/// Writes `text` as a DOT string between double quotes: backslash and double quote escaped,
/// and each line feed as `\n`, Graphviz's centred line break in a label.
fn write_quoted(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quoted(text: &str) -> String {
        let mut out = String::new();
        write_quoted(&mut out, text);
        out
    }

    #[test]
    fn quoted_strings_escape_backslash_and_quote_and_break_lines() {
        assert_eq!(quoted("parse"), r#""parse""#);
        assert_eq!(quoted("a\\b\"c\nd"), r#""a\\b\"c\nd""#);
        assert_eq!(quoted("x -> y; [z]"), r#""x -> y; [z]""#);
    }
}
