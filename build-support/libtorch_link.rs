// Shared by the build scripts of every crate whose binaries or tests link libtorch.
//
// torch-sys finds libtorch (the torch wheel in the project's virtualenv) and exports its
// library directory as `DEP_TCH_LIBTORCH_LIB` to crates that depend on it directly. We turn
// that into an rpath, so `trellis` and the test binaries run without LD_LIBRARY_PATH, and
// keep libtorch_cuda linked even though no symbol of ours refers to it: without
// `--no-as-needed` the linker drops it and CUDA is silently unavailable on GPU machines.

fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report libtorch's directory; binaries will need LD_LIBRARY_PATH");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
