//! The shape of a pipeline as its stats carry it: the input, the stages, the fans (branching
//! points) and the sinks, and which of them feeds which. [`Stats::to_dot`](super::Stats::to_dot)
//! draws it.

use crate::plan::{Flow, Node, Supply};

/// What feeds each node of a pipeline: the builder's flows (every stage but the first, every
/// fan and every sink, each with its suppliers) and whether each fan broadcasts or routes.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Graph {
    flows: Vec<Flow>,
    broadcast: Vec<bool>,
}

/// A node of the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Vertex {
    /// The input handles, which feed the first stage.
    Input,
    Stage(usize),
    /// A branching point: it broadcasts or routes to a branch and sends the rest on.
    Fan(usize),
    Sink(usize),
}

/// What an edge carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Carries {
    /// Everything its source emits, into a node fed by nothing else.
    All,
    /// What a fan sends on along the main line.
    Main,
    /// What a fan sends to its branch: a copy of everything (broadcast) or what the predicate
    /// accepts (route).
    Branch,
    /// A branch merging back into the main line: a supplier of a node after its first (the
    /// main line).
    Merge,
}

/// One edge: `from` feeds `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Edge {
    pub(crate) from: Vertex,
    pub(crate) to: Vertex,
    pub(crate) carries: Carries,
}

impl Graph {
    /// The graph of `flows`, whose fans broadcast where `broadcast` says so (and route
    /// elsewhere).
    pub(crate) fn new(flows: Vec<Flow>, broadcast: Vec<bool>) -> Self {
        Self { flows, broadcast }
    }

    /// Whether each fan broadcasts (or routes), in order.
    pub(crate) fn fans(&self) -> &[bool] {
        &self.broadcast
    }

    /// Every edge: the input into the first stage (when there is one), then each node's
    /// suppliers, in the order the pipeline was defined.
    pub(crate) fn edges(&self, has_stages: bool) -> Vec<Edge> {
        let first = has_stages.then_some(Edge {
            from: Vertex::Input,
            to: Vertex::Stage(0),
            carries: Carries::All,
        });
        let fed = self.flows.iter().flat_map(|flow| {
            let to = match flow.into {
                Node::Stage(index) => Vertex::Stage(index),
                Node::Fan(fan) => Vertex::Fan(fan),
                Node::Sink(index) => Vertex::Sink(index),
            };
            flow.from.iter().enumerate().map(move |(nth, supply)| {
                let (from, carries) = match *supply {
                    Supply::Stage(index) => (Vertex::Stage(index), Carries::All),
                    Supply::FanMain(fan) => (Vertex::Fan(fan), Carries::Main),
                    Supply::FanSide(fan) => (Vertex::Fan(fan), Carries::Branch),
                };
                let carries = if nth > 0 { Carries::Merge } else { carries };
                Edge { from, to, carries }
            })
        });
        first.into_iter().chain(fed).collect()
    }
}

impl Graph {
    /// Whether the graph knows no flows (stats not taken from a pipeline).
    pub(crate) fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// The stages whose outputs reach `to` directly or through fans, in the order found.
    pub(crate) fn stages_feeding(&self, to: Vertex) -> Vec<usize> {
        self.stages_feeding_any(|vertex| vertex == to)
    }

    /// The stages whose outputs reach a sink directly or through fans.
    pub(crate) fn stages_feeding_sinks(&self) -> Vec<usize> {
        self.stages_feeding_any(|vertex| matches!(vertex, Vertex::Sink(_)))
    }

    fn stages_feeding_any(&self, target: impl Fn(Vertex) -> bool) -> Vec<usize> {
        let edges = self.edges(true);
        let mut stages = Vec::new();
        let mut fans = Vec::new();
        let mut into: Vec<Vertex> =
            edges.iter().map(|edge| edge.to).filter(|&vertex| target(vertex)).collect();
        while let Some(vertex) = into.pop() {
            for edge in edges.iter().filter(|edge| edge.to == vertex) {
                match edge.from {
                    Vertex::Stage(index) if !stages.contains(&index) => stages.push(index),
                    Vertex::Fan(fan) if !fans.contains(&fan) => {
                        fans.push(fan);
                        into.push(Vertex::Fan(fan));
                    }
                    _ => {}
                }
            }
        }
        stages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_branch_that_merges_gives_the_merge_point_two_suppliers() {
        // parse ─ fan ─ branch: abs ─┐
        //             └ main ────────┴─ double ─ sink
        let flows = vec![
            Flow { into: Node::Fan(0), from: vec![Supply::Stage(0)] },
            Flow { into: Node::Stage(1), from: vec![Supply::FanSide(0)] },
            Flow { into: Node::Stage(2), from: vec![Supply::FanMain(0), Supply::Stage(1)] },
            Flow { into: Node::Sink(0), from: vec![Supply::Stage(2)] },
        ];
        let graph = Graph::new(flows, vec![false]);
        let edge = |from, to, carries| Edge { from, to, carries };
        use {Carries::*, Vertex::*};
        assert_eq!(
            graph.edges(true),
            [
                edge(Input, Stage(0), All),
                edge(Stage(0), Fan(0), All),
                edge(Fan(0), Stage(1), Branch),
                edge(Fan(0), Stage(2), Main),
                edge(Stage(1), Stage(2), Merge),
                edge(Stage(2), Sink(0), All),
            ]
        );
        assert_eq!(graph.fans(), [false]);
    }

    #[test]
    fn the_stages_feeding_a_node_are_found_through_fans() {
        // parse ─ fan ─ branch: audit ─ sink 1
        //             └ main: slow ─ sink 0
        let flows = vec![
            Flow { into: Node::Fan(0), from: vec![Supply::Stage(0)] },
            Flow { into: Node::Stage(1), from: vec![Supply::FanSide(0)] },
            Flow { into: Node::Sink(1), from: vec![Supply::Stage(1)] },
            Flow { into: Node::Stage(2), from: vec![Supply::FanMain(0)] },
            Flow { into: Node::Sink(0), from: vec![Supply::Stage(2)] },
        ];
        let graph = Graph::new(flows, vec![true]);
        assert_eq!(graph.stages_feeding(Vertex::Stage(2)), [0]);
        assert_eq!(graph.stages_feeding(Vertex::Stage(1)), [0]);
        assert_eq!(graph.stages_feeding(Vertex::Stage(0)), Vec::<usize>::new());
        let mut feeding_sinks = graph.stages_feeding_sinks();
        feeding_sinks.sort_unstable();
        assert_eq!(feeding_sinks, [1, 2]);
        assert!(!graph.is_empty() && Graph::default().is_empty());
    }

    #[test]
    fn without_stages_nothing_comes_from_the_input() {
        assert_eq!(Graph::default().edges(false), []);
    }
}
