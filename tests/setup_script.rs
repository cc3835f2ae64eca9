//! `scripts/setup.sh` decides whether to install libclang from the library bindgen would
//! actually load, the way clang-sys looks for it: `libclang.so` or `libclang-<version>.so*`,
//! never `libclang-cpp.so.*` (clang's C++ runtime, present on many images without
//! libclang). A fresh machine with only `libclang-cpp.so.14` failed to build rocksdb because
//! the script used to take that file for libclang. Checked through `setup.sh --check` with
//! `LIBCLANG_PATH` pointing at a directory holding only the files of each case.

use std::path::Path;
use std::process::Command;

/// Runs `setup.sh --check` with `LIBCLANG_PATH` = a directory holding `files`; returns
/// whether it found a libclang, and what it printed.
fn check_with(files: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    for file in files {
        std::fs::write(dir.path().join(file), b"").unwrap();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg("--check")
        .env("LIBCLANG_PATH", dir.path())
        .output()
        .unwrap();
    let printed =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), printed)
}

#[test]
fn libclang_cpp_alone_is_not_libclang() {
    let (found, printed) = check_with(&["libclang-cpp.so.14"]);
    assert!(!found, "libclang-cpp taken for libclang: {printed}");
}

#[test]
fn versioned_and_plain_libclang_are_found_next_to_libclang_cpp() {
    for lib in ["libclang-14.so.1", "libclang.so", "libclang.so.14"] {
        let (found, printed) = check_with(&["libclang-cpp.so.14", lib]);
        assert!(found, "{lib} not found: {printed}");
        assert!(
            printed.contains(lib),
            "{lib} is the one reported: {printed}"
        );
    }
}
