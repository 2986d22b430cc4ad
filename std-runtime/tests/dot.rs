//! `Stats::to_dot`, read back with a small parser of the DOT language (quoted strings with
//! escapes, attribute lists, node and edge statements): the nodes and edges it declares are
//! exactly the pipeline's, with the names, numbers and highlights a reader needs.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use backflow::{Bottleneck, Pipeline, Report, stage};
use common::{Flag, Gate};

/// A token of the DOT text.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// An identifier or a number.
    Id(String),
    /// A double-quoted string, unescaped (`\n` stays as the two characters: a line break
    /// to Graphviz, not to the string).
    Quoted(String),
    Arrow,
    Punct(char),
}

fn tokens(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '"' => {
                let mut s = String::new();
                loop {
                    match chars.next().expect("a quoted string ends") {
                        '"' => break,
                        '\\' => match chars.next().expect("an escape ends") {
                            '"' => s.push('"'),
                            '\\' => s.push('\\'),
                            other => {
                                s.push('\\');
                                s.push(other);
                            }
                        },
                        c => s.push(c),
                    }
                }
                out.push(Token::Quoted(s));
            }
            '-' if chars.peek() == Some(&'>') => {
                chars.next();
                out.push(Token::Arrow);
            }
            '{' | '}' | '[' | ']' | '=' | ';' | ',' => out.push(Token::Punct(c)),
            c if c.is_alphanumeric() || c == '_' || c == '.' => {
                let mut id = c.to_string();
                while let Some(&next) = chars.peek() {
                    if next.is_alphanumeric() || next == '_' || next == '.' {
                        id.push(next);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push(Token::Id(id));
            }
            other => panic!("unexpected character {other:?} in:\n{text}"),
        }
    }
    out
}

/// A DOT graph as the parser reads it: each node with its attributes, each edge with its.
#[derive(Debug, Default)]
struct Dot {
    nodes: BTreeMap<String, BTreeMap<String, String>>,
    edges: Vec<(String, String, BTreeMap<String, String>)>,
}

impl Dot {
    fn parse(text: &str) -> Self {
        let tokens = tokens(text);
        let mut at = 0;
        let mut next = || {
            let token = tokens.get(at).cloned().unwrap_or_else(|| panic!("the text ends early"));
            at += 1;
            token
        };
        assert_eq!(next(), Token::Id("digraph".into()));
        assert_eq!(next(), Token::Id("backflow".into()));
        assert_eq!(next(), Token::Punct('{'));
        let mut dot = Self::default();
        let mut pending = next();
        loop {
            let first = match pending {
                Token::Punct('}') => break,
                Token::Id(id) => id,
                other => panic!("a statement starts with {other:?}"),
            };
            let mut token = next();
            let mut to = None;
            if token == Token::Arrow {
                let Token::Id(target) = next() else { panic!("an edge ends in a node") };
                to = Some(target);
                token = next();
            }
            let mut attributes = BTreeMap::new();
            if token == Token::Punct('[') {
                loop {
                    let key = match next() {
                        Token::Punct(']') => break,
                        Token::Punct(',') => continue,
                        Token::Id(key) => key,
                        other => panic!("an attribute name, not {other:?}"),
                    };
                    assert_eq!(next(), Token::Punct('='));
                    let value = match next() {
                        Token::Id(value) | Token::Quoted(value) => value,
                        other => panic!("an attribute value, not {other:?}"),
                    };
                    attributes.insert(key, value);
                }
                token = next();
            }
            assert_eq!(token, Token::Punct(';'), "a statement ends in `;`");
            match (first.as_str(), to) {
                (from, Some(to)) => dot.edges.push((from.to_string(), to, attributes)),
                // Defaults for every graph, node and edge.
                ("graph" | "node" | "edge", None) => {}
                (node, None) => {
                    let previous = dot.nodes.insert(node.to_string(), attributes);
                    assert!(previous.is_none(), "node {node} declared twice");
                }
            }
            pending = next();
        }
        assert_eq!(at, tokens.len(), "nothing follows the graph");
        for (from, to, _) in &dot.edges {
            assert!(dot.nodes.contains_key(from), "edge from undeclared {from}");
            assert!(dot.nodes.contains_key(to), "edge to undeclared {to}");
        }
        dot
    }

    fn label(&self, node: &str) -> &str {
        &self.nodes[node]["label"]
    }

    /// The first line of each node's label, in node-name order.
    fn names(&self) -> BTreeSet<String> {
        self.nodes.keys().map(|node| self.label(node).split("\\n").next().unwrap().into()).collect()
    }

    /// Each edge as `from -> to` or `from -> to (label)`, sorted.
    fn edge_list(&self) -> Vec<String> {
        let mut edges: Vec<String> = self
            .edges
            .iter()
            .map(|(from, to, attributes)| match attributes.get("label") {
                Some(label) => format!("{from} -> {to} ({label})"),
                None => format!("{from} -> {to}"),
            })
            .collect();
        edges.sort();
        edges
    }
}

/// The demo's shape: parse → enrich → broadcast `totals` (aggregate → its sink) → route
/// `alerts` (its own sink) → encode → sink; 100 items, every one delivered.
fn demo_shape() -> Report {
    let pipeline = Pipeline::<u32>::builder()
        .stage("parse", || |x: u32| x)
        .stage("enrich", || |x: u32| x)
        .workers(std::num::NonZeroUsize::new(2).unwrap())
        .broadcast("totals", |every| every.stage("aggregate", || |x: u32| x).sink(|_| {}))
        .branch("alerts", |x: &u32| x.is_multiple_of(10), |alerts| alerts.sink(|_| {}))
        .stage("encode", || |x: u32| x.to_string())
        .sink(|_| {})
        .build()
        .unwrap();
    pipeline.input().push_iter(0..100).unwrap();
    pipeline.drain().unwrap()
}

#[test]
fn the_demo_shape_has_every_stage_fan_and_sink_and_each_edge_once() {
    let report = demo_shape();
    let dot = Dot::parse(&report.stats().to_dot());
    // input, 4 stages, 2 fans, 3 sinks.
    assert_eq!(dot.nodes.len(), 1 + 4 + 2 + 3, "{:?}", dot.nodes.keys());
    let names: BTreeSet<String> = [
        "input",
        "parse",
        "enrich ×2",
        "aggregate",
        "encode",
        "broadcast",
        "route",
        "sink",
        "totals",
        "alerts",
    ]
    .map(String::from)
    .into();
    assert_eq!(dot.names(), names);
    assert_eq!(
        dot.edge_list(),
        [
            "fan_0 -> fan_1 (main)",
            "fan_0 -> stage_2 (copy)",
            "fan_1 -> sink_2 (match)",
            "fan_1 -> stage_3 (main)",
            "input -> stage_0",
            "stage_0 -> stage_1",
            "stage_1 -> fan_0",
            "stage_2 -> sink_1",
            "stage_3 -> sink_0",
        ]
    );
    // Nodes are named in definition order: the branch's stage before the main line's next.
    assert!(dot.label("stage_2").starts_with("aggregate\\n"));
    assert!(dot.label("stage_3").starts_with("encode\\n"));
    assert_eq!(dot.nodes["fan_0"]["shape"], "diamond");
    assert!(dot.label("input").contains("\\n100 items"), "{}", dot.label("input"));
    let lines = |node| dot.label(node).split("\\n").map(String::from).collect::<Vec<_>>();
    assert!(lines("sink_1").contains(&"delivered 100".into()), "{:?}", lines("sink_1"));
    assert!(lines("sink_2").contains(&"delivered 10".into()), "{:?}", lines("sink_2"));
}

#[test]
fn a_branch_that_merges_back_feeds_the_merge_point_twice() {
    let (pipeline, output) = Pipeline::<i32>::builder()
        .stage("parse", || |x: i32| x)
        .branch("negatives", |x: &i32| *x < 0, |b| b.stage("abs", || |x: i32| -x).merge())
        .stage("double", || |x: i32| x * 2)
        .output()
        .build()
        .unwrap();
    pipeline.input().push_iter([1, -2, 3]).unwrap();
    let report = pipeline.drain().unwrap();
    assert_eq!(output.count(), 3);
    let dot = Dot::parse(&report.stats().to_dot());
    assert_eq!(dot.nodes.len(), 1 + 3 + 1 + 1);
    assert_eq!(
        dot.edge_list(),
        [
            "fan_0 -> stage_1 (match)",
            "fan_0 -> stage_2 (main)",
            "input -> stage_0",
            "stage_0 -> fan_0",
            "stage_1 -> stage_2 (merge)",
            "stage_2 -> sink_0",
        ]
    );
}

#[test]
fn names_with_quotes_backslashes_and_dot_syntax_stay_inside_their_labels() {
    let name = r#"a "b" \c -> d; [e=f] {g}"#;
    let pipeline =
        Pipeline::<u8>::builder().stage(name, || |x: u8| x).sink(|_| {}).build().unwrap();
    let report = pipeline.drain().unwrap();
    let dot = Dot::parse(&report.stats().to_dot());
    assert_eq!(dot.nodes.len(), 3);
    assert_eq!(dot.label("stage_0").split("\\n").next(), Some(name));
    assert_eq!(dot.edge_list(), ["input -> stage_0", "stage_0 -> sink_0"]);
}

/// A stage held at a gate with items queued in front of it: its node shows the queue and,
/// with pressure on, the amber fill.
#[test]
fn a_live_snapshot_shows_queue_fill_and_pressure() {
    let (gate, entered) = (Gate::default(), Flag::default());
    let held = {
        let (gate, entered) = (gate.clone(), entered.clone());
        move || {
            let (gate, entered) = (gate.clone(), entered.clone());
            stage::inspect(move |_: &u32| {
                entered.raise();
                gate.wait();
            })
        }
    };
    let pipeline = Pipeline::<u32>::builder()
        .stage("held", held)
        .capacity(10)
        .water_marks(80, 40)
        .sink(|_| {})
        .build()
        .unwrap();
    let input = pipeline.input();
    input.push(0).unwrap();
    entered.wait();
    // The worker holds item 0; 8 more fill the queue to its high mark, and pressure turns on.
    input.push_iter(1..9).unwrap();
    let dot = Dot::parse(&pipeline.stats().to_dot());
    let held = &dot.nodes["stage_0"];
    let label = &held["label"];
    assert!(label.contains("\\nqueue 8/10 (80 %)\\n"), "{label}");
    assert!(label.contains("\\npressure on\\n"), "{label}");
    assert_eq!(held["fillcolor"], "#ffe9b3", "{held:?}");
    gate.open();
    let report = pipeline.drain().unwrap();
    assert_eq!(report.sink().delivered, 9);
    let dot = Dot::parse(&report.stats().to_dot());
    let label = dot.label("stage_0");
    assert!(label.contains("\\nqueue 0/10 (0 %)\\npressure off\\n"), "{label}");
}

/// A stage that sleeps on every item is busy nearly all the time: the bottleneck, outlined
/// with its busy share; nothing else is.
#[test]
fn the_bottleneck_stage_is_outlined_with_its_reason() {
    let pipeline = Pipeline::<u32>::builder()
        .stage("fast", || |x: u32| x)
        .stage("slow", || {
            stage::inspect(|_: &u32| std::thread::sleep(std::time::Duration::from_micros(200)))
        })
        .sink(|_| {})
        .build()
        .unwrap();
    pipeline.input().push_iter(0..500).unwrap();
    let report = pipeline.drain().unwrap();
    let bottleneck = report.stats().bottleneck();
    assert!(
        matches!(&bottleneck, Some(Bottleneck::Stage { name, .. }) if name == "slow"),
        "{bottleneck:?}"
    );
    let dot = Dot::parse(&report.stats().to_dot());
    let outlined: Vec<&String> =
        dot.nodes.iter().filter(|(_, a)| a.contains_key("penwidth")).map(|(n, _)| n).collect();
    assert_eq!(outlined, ["stage_1"]);
    let label = dot.label("stage_1");
    assert!(label.starts_with("slow\\n") && label.contains("\\nbottleneck: busy "), "{label}");
}
