//! Kiln built-in sampler `greedy`: the most likely token (top-1 view). Config: {}.
//! The implementation is `kiln_sampler::chain::GreedySampler`; this crate only exports it.

#![no_std]

kiln_sampler::export_sampler!(kiln_sampler::chain::GreedySampler);
