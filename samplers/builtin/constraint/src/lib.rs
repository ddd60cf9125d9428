//! Kiln built-in sampler `constraint`: output constrained by a regex or to one JSON value. Config keys: regex | json, sampler.
//! The implementation is `kiln_sampler::constraint::ConstraintSampler`; this crate only exports it.

#![no_std]

kiln_sampler::export_sampler!(kiln_sampler::constraint::ConstraintSampler, mask);
