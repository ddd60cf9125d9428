//! The CPU backend passes the SDK's backend conformance suite (loaded through the ABI).

use kiln_e2e::cpu_backend;
use kiln_sdk::abi::client::BackendLib;
use kiln_sdk::abi::KilnBackendHeader;
use std::sync::Arc;

#[test]
fn cpu_backend_conforms() {
    // SAFETY: the CPU backend built in this workspace; the header symbol is a static.
    let lib = unsafe { libloading::Library::new(cpu_backend()) }.expect("load CPU backend");
    let header: *const KilnBackendHeader =
        unsafe { *lib.get(b"kiln_backend_header\0").expect("symbol") };
    let lib = unsafe { BackendLib::new(header, Arc::new(lib)) }.expect("ABI check");
    match kiln_sdk::conformance::check(&lib, &kiln_sdk::conformance::Tolerance::default()) {
        Ok(report) => {
            for line in report.lines {
                println!("{line}");
            }
        }
        Err(e) => panic!("conformance: {e}"),
    }
}
