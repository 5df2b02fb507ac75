//! PRM-guided Monte-Carlo tree search over reasoning steps (after ReST-MCTS*).

use rm_process::final_answer::AnswerExtraction;
use serde::{Deserialize, Serialize};

use crate::error::{DecodeError, Result};
use crate::search::{Expander, Partial};

/// How a finished rollout (or a finished node) is judged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutJudge {
    /// The PRM's aggregated score of the finished solution.
    #[default]
    Prm,
    /// 1 when the solution's final answer equals the prompt's gold answer, else 0
    /// (Math-Shepherd's soft label: the fraction of completions from a step that reach the
    /// gold answer). Needs prompts with gold answers (`gsm8k:test`, or `"answer"` in the rows).
    Answer,
}

fn one() -> f64 {
    1.0
}

/// How MCTS values a new node. In TOML, the `[strategy.value]` table; every field has a
/// default, and the defaults are ReST-MCTS*'s PRM value of the partial solution.
///
/// With `rollouts = k > 0`, each new unfinished node is completed `k` times to the end (one
/// batch for all of an expansion's children) and its value mixes the PRM's value of the
/// partial solution with the mean outcome of the rollouts, as AlphaGo mixes its value network
/// with rollouts (Silver et al. 2016, "Mastering the game of Go with deep neural networks and
/// tree search"):
/// ```text
/// v(s) = (1 − λ) · v_PRM(s) + λ · (1/k) Σ_j judge(rollout_j(s))
/// ```
/// A finished node is its own rollout: `v = (1 − λ)·v_PRM(s) + λ·judge(s)`. With
/// `judge = "answer"` the outcome is whether the rollout reaches the gold answer, the
/// Monte-Carlo value of Math-Shepherd (Wang et al. 2024, "Math-Shepherd: Verify and Reinforce
/// LLMs Step-by-step without Human Annotations") that "What Are Step-Level Reward Models
/// Rewarding?" (Ma et al. 2024) backs up through MCTS to label sibling steps. Such values know
/// the gold answer, so the search's answer is an oracle's pick: use them to label trees
/// (`--step-pairs`), not to measure accuracy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeValue {
    /// Completions rolled out from each new unfinished node (0: the PRM's value only).
    pub rollouts: usize,
    pub judge: RolloutJudge,
    /// λ, the rollouts' share of the value, in [0, 1].
    #[serde(default = "one")]
    pub lambda: f64,
    /// How `judge = "answer"` finds a final answer.
    pub extraction: AnswerExtraction,
}

impl Default for NodeValue {
    fn default() -> Self {
        Self {
            rollouts: 0,
            judge: RolloutJudge::Prm,
            lambda: 1.0,
            extraction: AnswerExtraction::Flexible,
        }
    }
}

impl NodeValue {
    /// Checks the fields; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.lambda) {
            return Err(DecodeError::config(
                "value.lambda",
                format!("must be in [0, 1], got {}", self.lambda),
            ));
        }
        if self.rollouts == 0 && self.judge == RolloutJudge::Answer {
            return Err(DecodeError::config(
                "value.rollouts",
                "judge = \"answer\" values nodes by rollouts to the end: give rollouts ≥ 1",
            ));
        }
        Ok(())
    }

    /// Whether the PRM's value of a partial solution enters the value.
    fn reads_partial_prm(&self) -> bool {
        self.rollouts == 0 || self.lambda < 1.0
    }

    /// Whether a process reward model is read at all (else MCTS runs without one).
    pub fn needs_prm(&self) -> bool {
        self.reads_partial_prm() || self.judge == RolloutJudge::Prm
    }

    /// Whether the values read the prompt's gold answer (answer-checked rollouts with a
    /// non-zero share), which makes the search's pick an oracle's.
    pub fn reads_gold(&self) -> bool {
        self.rollouts > 0 && self.judge == RolloutJudge::Answer && self.lambda > 0.0
    }
}

/// The values of an expansion's new nodes ([`NodeValue`]) and the rollouts generated.
fn node_values(
    ex: &mut dyn Expander,
    kids: &[Partial],
    value: &NodeValue,
) -> Result<(Vec<f64>, usize)> {
    let refs: Vec<&Partial> = kids.iter().collect();
    let partial = match value.reads_partial_prm() {
        true => ex.score(&refs)?,
        false => vec![0.0; kids.len()],
    };
    if value.rollouts == 0 {
        return Ok((partial, 0));
    }
    // Every unfinished child `rollouts` times, in one batch generated to the end.
    let open: Vec<&Partial> = refs
        .iter()
        .filter(|k| !k.finished)
        .flat_map(|k| std::iter::repeat_n(*k, value.rollouts))
        .collect();
    let ends = match open.is_empty() {
        true => Vec::new(),
        false => ex.expand(&open, true)?,
    };
    // One judge call: the finished children themselves (unless the PRM already scored them
    // and is the judge), then every rollout.
    let rejudge = !(value.judge == RolloutJudge::Prm && value.reads_partial_prm());
    let mut judged: Vec<&Partial> = refs
        .iter()
        .copied()
        .filter(|k| k.finished && rejudge)
        .collect();
    let own_count = judged.len();
    judged.extend(ends.iter());
    let outcomes = match (judged.is_empty(), value.judge) {
        (true, _) => Vec::new(),
        (false, RolloutJudge::Prm) => ex.score(&judged)?,
        (false, RolloutJudge::Answer) => ex.check(&judged)?,
    };
    let (mut own, mut rolled) = (
        outcomes[..own_count].iter(),
        outcomes[own_count..].chunks(value.rollouts),
    );
    let values = kids
        .iter()
        .zip(partial)
        .map(|(kid, v_prm)| {
            let z = match kid.finished {
                true if !rejudge => v_prm,
                true => *own.next().expect("one outcome per finished child"),
                false => {
                    let chunk = rolled.next().expect("one chunk per open child");
                    chunk.iter().sum::<f64>() / chunk.len() as f64
                }
            };
            (1.0 - value.lambda) * v_prm + value.lambda * z
        })
        .collect();
    Ok((values, ends.len()))
}

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
    /// Completions rolled out to value new nodes ([`NodeValue::rollouts`]).
    pub rollouts: usize,
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
///          v(c_i) = the PRM's aggregated score of c_i (one call), or by rollouts ([`NodeValue`]);
///          N(c_i) = 1, W(c_i) = v(c_i)
///          backup: every node u on the path root … s gets N(u) += k, W(u) += Σ_i v(c_i)
/// ```
/// so Q(u) is the mean PRM value of the evaluations in u's subtree. After `simulations`
/// simulations the answer is the finished node of highest value v (ties: the first created);
/// without one, the node of highest value (rollouts value nodes; they are not answers).
/// ReST-MCTS* also weighs values by the reasoning distance to the end; that is not done here.
pub(crate) fn mcts(
    ex: &mut dyn Expander,
    (simulations, children, exploration): (usize, usize, f64),
    max_steps: usize,
    value: &NodeValue,
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
    let (mut expansions, mut rollouts) = (0, 0);
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
            let (values, rolled) = node_values(ex, &kids, value)?;
            expansions += 1;
            rollouts += rolled;
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
        rollouts,
    })
}
