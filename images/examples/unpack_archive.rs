//! Unpacks one rootfs archive into a store: `unpack_archive ARCHIVE HOME`.
//! For profiling the unpacker by hand.

use std::path::Path;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: unpack_archive ARCHIVE HOME");
        std::process::exit(2);
    }
    let store = lockbox_images::ImageStore::open(Path::new(&args[2])).expect("open store");
    let t = Instant::now();
    match store.import_archive(
        Path::new(&args[1]),
        None,
        None,
        &lockbox_images::Cancel::never(),
    ) {
        Ok(img) => println!(
            "{} in {:.3}s: {}",
            img.digest,
            t.elapsed().as_secs_f64(),
            img.rootfs.display()
        ),
        Err(e) => {
            eprintln!("{} ({})", e, e.code());
            std::process::exit(1);
        }
    }
}
