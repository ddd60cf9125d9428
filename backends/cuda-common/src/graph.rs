//! CUDA graphs: capture what a stream is given between [`begin_capture`] and
//! [`end_capture`], then replay it with one launch.

use crate::mem::Stream;
use crate::{DriverResultExt, Result};
use cudarc::driver::{result, sys};

/// An instantiated graph, destroyed on drop.
pub struct Graph {
    exec: sys::CUgraphExec,
}

// SAFETY: an executable graph handle may be launched from any thread with its context current.
unsafe impl Send for Graph {}
unsafe impl Sync for Graph {}

/// Starts capturing the work queued on `s` (relaxed mode: other threads may use CUDA).
pub fn begin_capture(s: &Stream) -> Result<()> {
    // SAFETY: valid stream.
    unsafe {
        result::stream::begin_capture(
            s.raw(),
            sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED,
        )
    }
    .ctx("cuStreamBeginCapture")
}

/// Ends a capture and instantiates the graph.
pub fn end_capture(s: &Stream) -> Result<Graph> {
    // SAFETY: valid stream, capturing.
    let g = unsafe { result::stream::end_capture(s.raw()) }.ctx("cuStreamEndCapture")?;
    // SAFETY: `g` was just captured; destroyed after instantiation.
    let exec = unsafe { result::graph::instantiate(g, sys::CUgraphInstantiate_flags(0)) };
    let _ = unsafe { result::graph::destroy(g) };
    Ok(Graph {
        exec: exec.ctx("cuGraphInstantiate")?,
    })
}

/// Ends a capture that failed part-way, discarding it.
pub fn abort_capture(s: &Stream) {
    // SAFETY: valid stream; the graph, if any, is destroyed.
    unsafe {
        if let Ok(g) = result::stream::end_capture(s.raw()) {
            if !g.is_null() {
                let _ = result::graph::destroy(g);
            }
        }
    }
}

impl Graph {
    /// Launches the graph on `s`.
    pub fn launch(&self, s: &Stream) -> Result<()> {
        // SAFETY: valid graph and stream.
        unsafe { result::graph::launch(self.exec, s.raw()) }.ctx("cuGraphLaunch")
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        // SAFETY: instantiated once, destroyed once.
        let _ = unsafe { result::graph::exec_destroy(self.exec) };
    }
}
