//! PRM-guided Monte-Carlo tree search over reasoning steps (after ReST-MCTS*).

use crate::error::{DecodeError, Result};
use crate::search::{Expander, Partial};

/// One node: a partial solution, its own PRM value, and its visit statistics.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    pub partial: Partial,
    pub parent: Option<usize>,
    pub children: Vec<usize>,
    /// Steps from the root.
    pub depth: usize,
    /// The PRM's aggregated score of this partial solution (0 for the root, never read).
    pub value: f64,
    /// N(s): evaluations backed up through this node (its own included).
    pub visits: u64,
    /// W(s): their sum; Q(s) = W(s) / N(s).
    pub value_sum: f64,
}

impl Node {
    pub fn q(&self) -> f64 {
        self.value_sum / self.visits.max(1) as f64
    }
}

/// What a search found.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct MctsOutcome {
    /// Node 0 is the root; children follow in creation order.
    pub nodes: Vec<Node>,
    /// The answer's node: the best finished node by value, or the best node at all when none
    /// finished (`finished` false).
    pub best: usize,
    pub finished: bool,
    /// Simulations that expanded a node (each one batch of `children` rows and one PRM call).
    pub expansions: usize,
}

/// Step preferences from one node's children (Ma et al. 2024, "What Are Step-Level Reward
/// Models Rewarding?", label sibling steps by their MCTS values): every ordered pair `(a, b)`
/// of siblings with `Q(a) > Q(b)` and `Q(a) − Q(b) ≥ margin`, `a` preferred. Indices into
/// `q`; ties are never pairs, and `margin > 0` keeps near-ties out.
pub fn sibling_preferences(q: &[f64], margin: f64) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (a, &qa) in q.iter().enumerate() {
        for (b, &qb) in q.iter().enumerate() {
            if qa > qb && qa - qb >= margin {
                out.push((a, b));
            }
        }
    }
    out
}

/// The UCT score of child `c` of a node visited `parent_visits` times:
/// `Q(c) + C · sqrt(ln N(parent) / N(c))`.
pub(crate) fn uct(child: &Node, parent_visits: u64, exploration: f64) -> f64 {
    child.q() + exploration * ((parent_visits as f64).ln() / child.visits as f64).sqrt()
}

/// PRM-guided MCTS with a fixed simulation budget (Zhang et al. 2024, "ReST-MCTS*: LLM
/// Self-Training via Process Reward Guided Tree Search", whose search uses the PRM's value of
/// each partial solution in place of rollouts; simplified as below).
///
/// Nodes are partial solutions, one reasoning step per edge. Each simulation:
/// ```text
/// select:  from the root, while s has children: s ← argmax_c Q(c) + C·sqrt(ln N(s) / N(c))
///          (ties: the first child)
/// if s is finished:  backup(v(s)) once along the path            (no tokens, no PRM call)
/// else expand: k children c_i of s (one batch; depth max_steps is generated to the end),
///          v(c_i) = the PRM's aggregated score of c_i (one call); N(c_i) = 1, W(c_i) = v(c_i)
///          backup: every node u on the path root … s gets N(u) += k, W(u) += Σ_i v(c_i)
/// ```
/// so Q(u) is the mean PRM value of the evaluations in u's subtree. After `simulations`
/// simulations the answer is the finished node of highest value v (ties: the first created);
/// without one, the node of highest value. ReST-MCTS* also weighs values by the reasoning
/// distance to the end and may roll out; neither is done here.
pub(crate) fn mcts(
    ex: &mut dyn Expander,
    simulations: usize,
    children: usize,
    exploration: f64,
    max_steps: usize,
) -> Result<MctsOutcome> {
    let mut nodes = vec![Node {
        partial: Partial::default(),
        parent: None,
        children: Vec::new(),
        depth: 0,
        value: 0.0,
        visits: 0,
        value_sum: 0.0,
    }];
    let mut expansions = 0;
    for _ in 0..simulations {
        let mut s = 0;
        let mut path = vec![0];
        while !nodes[s].children.is_empty() {
            let n = nodes[s].visits;
            let mut best = nodes[s].children[0];
            for &c in &nodes[s].children[1..] {
                if uct(&nodes[c], n, exploration) > uct(&nodes[best], n, exploration) {
                    best = c;
                }
            }
            s = best;
            path.push(s);
        }
        let (count, total) = if nodes[s].partial.finished {
            (1, nodes[s].value)
        } else {
            let last = nodes[s].depth + 1 >= max_steps;
            let parents = vec![&nodes[s].partial; children];
            let kids = ex.expand(&parents, last)?;
            let refs: Vec<&Partial> = kids.iter().collect();
            let values = ex.score(&refs)?;
            expansions += 1;
            let depth = nodes[s].depth + 1;
            let total: f64 = values.iter().sum();
            for (partial, value) in kids.into_iter().zip(values) {
                let id = nodes.len();
                nodes.push(Node {
                    partial,
                    parent: Some(s),
                    children: Vec::new(),
                    depth,
                    value,
                    visits: 1,
                    value_sum: value,
                });
                nodes[s].children.push(id);
            }
            (children as u64, total)
        };
        for &u in &path {
            nodes[u].visits += count;
            nodes[u].value_sum += total;
        }
    }
    let pick = |finished_only: bool| {
        let mut best: Option<usize> = None;
        for (i, n) in nodes.iter().enumerate().skip(1) {
            if finished_only && !n.partial.finished {
                continue;
            }
            if best.is_none_or(|b| n.value > nodes[b].value) {
                best = Some(i);
            }
        }
        best
    };
    let (best, finished) = match pick(true) {
        Some(b) => (b, true),
        None => (
            pick(false)
                .ok_or_else(|| DecodeError::config("simulations", "nothing was expanded"))?,
            false,
        ),
    };
    Ok(MctsOutcome {
        nodes,
        best,
        finished,
        expansions,
    })
}
