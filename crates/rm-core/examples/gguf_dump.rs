//! Prints a GGUF file's metadata (arrays summarised) and tensor table: `cargo run -p rm-core
//! --example gguf_dump -- FILE.gguf`.

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: gguf_dump FILE.gguf"))?;
    let f = rm_core::gguf::GgufFile::open(&path)?;
    println!(
        "GGUF v{}: {} metadata keys, {} tensors",
        f.version(),
        f.metadata().len(),
        f.tensor_infos().len()
    );
    for (k, v) in f.metadata() {
        match v.as_array() {
            Some(a) => println!("  {k}: array of {} (first: {:?})", a.len(), a.first()),
            None => println!("  {k}: {v:?}"),
        }
    }
    let mut types = std::collections::BTreeMap::new();
    for t in f.tensor_infos() {
        *types.entry(format!("{:?}", t.ggml_type)).or_insert(0) += 1;
    }
    println!("tensor types: {types:?}");
    for t in f.tensor_infos().iter().take(12) {
        println!("  {} {:?} {:?}", t.name, t.shape(), t.ggml_type);
    }
    Ok(())
}
