//! A stage's training stream: draws (sample, task, instruction) from a weighted dataset mixture in a
//! seeded order whose whole state (per-dataset epoch and cursor, the RNG's position) fits in a
//! checkpoint, so a resumed run draws exactly what the uninterrupted one would have.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// One dataset of the mixture: its usable (sample, task) pairs, weight and instruction pools.
#[derive(Debug, Clone)]
pub struct Component {
    pub name: String,
    /// (index into the run's sample pool, task) pairs whose sample has that task's answer.
    pub pairs: Vec<(usize, crate::recipe::Task)>,
    pub weight: f64,
    /// Instruction pool per task.
    pub instructions: std::collections::BTreeMap<crate::recipe::Task, Vec<String>>,
}

/// Position in one component: passes completed and the next index in the current pass's order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentState {
    pub epoch: u64,
    pub cursor: usize,
}

/// Everything the stream's next draw depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataState {
    pub seed: u64,
    /// ChaCha8 word position (a u128, as a decimal string for JSON).
    pub rng_word_pos: String,
    pub components: Vec<ComponentState>,
}

/// One draw.
#[derive(Debug, Clone, PartialEq)]
pub struct Draw {
    pub component: usize,
    pub sample: usize,
    pub task: crate::recipe::Task,
    pub instruction: String,
}

pub struct MixtureSampler {
    components: Vec<Component>,
    seed: u64,
    rng: ChaCha8Rng,
    state: Vec<ComponentState>,
    /// The current pass's order of each component (derived from seed, component and epoch).
    orders: Vec<Vec<usize>>,
}

/// A well-mixed 64-bit value from several (splitmix64 steps), for derived seeds.
pub fn mix(parts: &[u64]) -> u64 {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for p in parts {
        x ^= p.wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_add(x << 6).wrapping_add(x >> 2);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
    }
    x
}

impl MixtureSampler {
    /// Components with no pairs are dropped by the caller; `components` must not be empty.
    pub fn new(components: Vec<Component>, seed: u64) -> Self {
        let state = vec![ComponentState::default(); components.len()];
        let mut s = Self { rng: ChaCha8Rng::seed_from_u64(seed), seed, orders: Vec::new(), state, components };
        s.orders = (0..s.components.len()).map(|c| s.order(c, 0)).collect();
        s
    }

    fn order(&self, component: usize, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.components[component].pairs.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(&[self.seed, component as u64, epoch])));
        order
    }

    /// Continues from a checkpointed state (of a sampler built from the same components and seed).
    pub fn restore(&mut self, state: &DataState) -> Result<(), String> {
        if state.seed != self.seed || state.components.len() != self.components.len() {
            return Err(format!(
                "the checkpoint's data stream (seed {}, {} datasets) is not this stage's (seed {}, {} datasets)",
                state.seed,
                state.components.len(),
                self.seed,
                self.components.len()
            ));
        }
        let pos: u128 = state.rng_word_pos.parse().map_err(|_| format!("bad RNG position `{}`", state.rng_word_pos))?;
        self.rng.set_word_pos(pos);
        self.state = state.components.clone();
        self.orders = (0..self.components.len()).map(|c| self.order(c, self.state[c].epoch)).collect();
        Ok(())
    }

    pub fn state(&self) -> DataState {
        DataState { seed: self.seed, rng_word_pos: self.rng.get_word_pos().to_string(), components: self.state.clone() }
    }

    /// Passes over the first component so far (epoch + fraction), for logs.
    pub fn epoch_progress(&self) -> f64 {
        let n = self.components[0].pairs.len().max(1);
        self.state[0].epoch as f64 + self.state[0].cursor as f64 / n as f64
    }

    pub fn next_draw(&mut self) -> Draw {
        let component = if self.components.len() == 1 {
            0
        } else {
            let total: f64 = self.components.iter().map(|c| c.weight).sum();
            let mut r = self.rng.random::<f64>() * total;
            let mut pick = self.components.len() - 1;
            for (i, c) in self.components.iter().enumerate() {
                if r < c.weight {
                    pick = i;
                    break;
                }
                r -= c.weight;
            }
            pick
        };
        let st = &mut self.state[component];
        if st.cursor == self.orders[component].len() {
            st.epoch += 1;
            st.cursor = 0;
            let epoch = st.epoch;
            self.orders[component] = self.order(component, epoch);
        }
        let st = &mut self.state[component];
        let (sample, task) = self.components[component].pairs[self.orders[component][st.cursor]];
        st.cursor += 1;
        let pool = self.components[component].instructions.get(&task).map(Vec::as_slice).unwrap_or(&[]);
        let instruction = if pool.is_empty() { String::new() } else { pool[self.rng.random_range(0..pool.len())].clone() };
        Draw { component, sample, task, instruction }
    }
}

impl MixtureSampler {
    /// One rank's shard of the next global batch of `world × batch` draws: the whole batch is drawn (every
    /// rank follows the one seeded stream) and rank `rank` keeps its slice, so the shards are disjoint and
    /// together are the single-process stream's batch.
    pub fn next_shard(&mut self, batch: usize, rank: usize, world: usize) -> Vec<Draw> {
        let global: Vec<Draw> = (0..batch * world).map(|_| self.next_draw()).collect();
        global.into_iter().skip(rank * batch).take(batch).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comp(name: &str, n: usize, weight: f64) -> Component {
        let pairs = (0..n).map(|i| (i, crate::recipe::Task::Emotion)).collect();
        let instructions = [(crate::recipe::Task::Emotion, vec!["a".to_string(), "b".to_string(), "c".to_string()])].into();
        Component { name: name.into(), pairs, weight, instructions }
    }

    #[test]
    fn restored_stream_continues_exactly() {
        let make = || MixtureSampler::new(vec![comp("x", 7, 0.5), comp("y", 3, 1.5)], 42);
        let mut a = make();
        let all: Vec<Draw> = (0..40).map(|_| a.next_draw()).collect();
        let mut b = make();
        (0..17).for_each(|_| {
            b.next_draw();
        });
        let json = serde_json::to_string(&b.state()).unwrap();
        let mut c = make();
        c.restore(&serde_json::from_str(&json).unwrap()).unwrap();
        let rest: Vec<Draw> = (17..40).map(|_| c.next_draw()).collect();
        assert_eq!(rest, all[17..]);
    }

    #[test]
    fn weights_set_the_mixture_and_each_pass_covers_every_pair() {
        let mut s = MixtureSampler::new(vec![comp("x", 5, 1.0), comp("y", 5, 3.0)], 7);
        let draws: Vec<Draw> = (0..4000).map(|_| s.next_draw()).collect();
        let share = draws.iter().filter(|d| d.component == 1).count() as f64 / draws.len() as f64;
        assert!((share - 0.75).abs() < 0.03, "share of y {share}");
        let first_pass: std::collections::BTreeSet<usize> = draws.iter().filter(|d| d.component == 0).take(5).map(|d| d.sample).collect();
        assert_eq!(first_pass.len(), 5);
    }

    #[test]
    fn rank_shards_are_disjoint_and_make_up_the_single_process_stream() {
        let make = || MixtureSampler::new(vec![comp("x", 7, 0.5), comp("y", 5, 1.5)], 9);
        let mut single = make();
        let mut ranks: Vec<MixtureSampler> = (0..3).map(|_| make()).collect();
        for _ in 0..10 {
            let whole = single.next_shard(12, 0, 1);
            let shards: Vec<Vec<Draw>> = ranks.iter_mut().enumerate().map(|(r, s)| s.next_shard(4, r, 3)).collect();
            assert_eq!(shards.concat(), whole, "the ranks' shards, in rank order, are the single process's batch");
            // Disjoint positions of one stream: every rank continues from the same state.
            assert!(ranks.windows(2).all(|w| w[0].state() == w[1].state()) && ranks[0].state() == single.state());
        }
    }
}
