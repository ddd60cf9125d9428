//! Kiln built-in sampler `mirostat`: Mirostat 2.0. Config keys: tau, eta, temperature, stop.
//! The implementation is `kiln_sampler::mirostat::MirostatSampler`; this crate only exports it.

#![no_std]

kiln_sampler::export_sampler!(kiln_sampler::mirostat::MirostatSampler);
