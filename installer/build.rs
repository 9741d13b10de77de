// Compiles the trusted public keys of manifests/keys/*.pub into the CLI
// (the same files the Go SDK embeds), so a CI install trusts exactly what
// the source tree trusts.
use std::{env, fs, path::Path};

fn main() {
    let keys_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/keys");
    println!("cargo:rerun-if-changed={}", keys_dir.display());
    let mut entries = Vec::new();
    if let Ok(rd) = fs::read_dir(&keys_dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) == Some("pub") {
                println!("cargo:rerun-if-changed={}", p.display());
                let name = p.file_stem().unwrap().to_string_lossy().into_owned();
                entries.push((name, p.canonicalize().unwrap()));
            }
        }
    }
    entries.sort();
    let mut src = String::from("pub static EMBEDDED_KEYS: &[(&str, &str)] = &[\n");
    for (name, path) in entries {
        src += &format!(
            "    ({name:?}, include_str!({:?})),\n",
            path.display().to_string()
        );
    }
    src += "];\n";
    let out = Path::new(&env::var("OUT_DIR").unwrap()).join("embedded_keys.rs");
    fs::write(out, src).unwrap();
}
