//! Kiln built-in sampler `chain`: llama.cpp's sampling chain with stop strings. Config keys: temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, frequency_penalty, presence_penalty, logit_bias, stop.
//! The implementation is `kiln_sampler::chain::ChainSampler`; this crate only exports it.

#![no_std]

kiln_sampler::export_sampler!(kiln_sampler::chain::ChainSampler);
