//! Upload and download throughput of ops-storage against plain copies and raw
//! `object_store` calls, in the same run (the ratios are the figures to compare).
//!
//! ```sh
//! cargo bench -p ops-storage --all-features --bench throughput            # 1 GiB, 10,000 files
//! cargo bench -p ops-storage --all-features --bench throughput -- --quick # 128 MiB, 1,000 files
//! ```
//!
//! Options: `--size-mib N` (the large file), `--files N` (the small files, 4 KiB each),
//! `--only local|s3`, `--memory-catalog` (the in-memory catalog instead of SQLite, to
//! see what the catalog costs), `--rounds N` (local runs every measure N times, 3 by
//! default, and keeps each side's best time; S3 on moto runs once). The S3 part runs against the server at `OPS_TEST_S3_ENDPOINT`
//! (`scripts/bench` starts moto) and is skipped, with a note, when it is unset.
//!
//! What is timed:
//! - **large upload**: `Scoped::put_file` (8 MiB parts, SHA-256, catalog record and
//!   event in SQLite) against `tokio::fs::copy` of the same file (local only) and a raw
//!   `object_store` multipart upload of the same file in 8 MiB parts;
//! - **large download**: `Scoped::get_file` (streamed, SHA-256) against a copy back and
//!   a raw `object_store` streamed get into a file;
//! - **small files**: N objects of 4 KiB through `Scoped::put` / `Scoped::get`, 16 at a
//!   time, against raw `object_store` put/get (and, locally, writing the files).

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use ops_storage::catalog::{Catalog, MemoryCatalog, SqliteCatalog};
use ops_storage::{PART_SIZE, Scoped, Storage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SMALL: usize = 4096;
const CONCURRENCY: usize = 16;

struct Options {
    size_mib: u64,
    files: usize,
    only: Option<String>,
    memory_catalog: bool,
    rounds: usize,
}

fn options() -> Options {
    let mut o = Options {
        size_mib: 1024,
        files: 10_000,
        only: None,
        memory_catalog: false,
        rounds: 3,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => {
                o.size_mib = 128;
                o.files = 1000;
            }
            "--size-mib" => o.size_mib = args.next().and_then(|v| v.parse().ok()).unwrap_or(1024),
            "--files" => o.files = args.next().and_then(|v| v.parse().ok()).unwrap_or(10_000),
            "--only" => o.only = args.next(),
            "--memory-catalog" => o.memory_catalog = true,
            "--rounds" => o.rounds = args.next().and_then(|v| v.parse().ok()).unwrap_or(3).max(1),
            _ => {} // cargo bench passes --bench
        }
    }
    o
}

/// A row of a results table: what, our time, the baselines' times.
struct Row {
    what: String,
    bytes: u64,
    ours: Duration,
    baselines: Vec<(&'static str, Duration)>,
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn print_rows(title: &str, rows: &[Row]) {
    println!("### {title}");
    println!();
    println!("| measure | ops-storage | baseline | ratio (ops-storage / baseline) |");
    println!("|---|---|---|---|");
    for r in rows {
        for (name, base) in &r.baselines {
            println!(
                "| {} | {:.1} MiB/s ({:.2} s) | {name}: {:.1} MiB/s ({:.2} s) | {:.2}x |",
                r.what,
                mib_s(r.bytes, r.ours),
                r.ours.as_secs_f64(),
                mib_s(r.bytes, *base),
                base.as_secs_f64(),
                base.as_secs_f64() / r.ours.as_secs_f64(),
            );
        }
    }
    println!();
}

/// Merges the rows of another round into `best`: each side keeps its best time.
fn keep_best(best: &mut Vec<Row>, round: Vec<Row>) {
    if best.is_empty() {
        *best = round;
        return;
    }
    for (b, r) in best.iter_mut().zip(round) {
        b.ours = b.ours.min(r.ours);
        for ((_, bt), (_, rt)) in b.baselines.iter_mut().zip(r.baselines) {
            *bt = (*bt).min(rt);
        }
    }
}

/// Writes `mib` MiB of incompressible-looking bytes.
async fn make_file(path: &FsPath, mib: u64) {
    let mut block = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in block.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut f = tokio::fs::File::create(path).await.unwrap();
    for i in 0..mib {
        block[0] = i as u8;
        f.write_all(&block).await.unwrap();
    }
    f.flush().await.unwrap();
}

async fn timed<F: std::future::Future<Output = T>, T>(f: F) -> (T, Duration) {
    let start = Instant::now();
    let out = f.await;
    (out, start.elapsed())
}

/// A raw multipart upload of `file` to `location` in 8 MiB parts: what ops-storage
/// does without its checks, checksum and catalog.
async fn raw_put_file(store: &dyn ObjectStore, location: &Path, file: &FsPath) {
    let upload = store.put_multipart(location).await.unwrap();
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
    let mut f = tokio::fs::File::open(file).await.unwrap();
    loop {
        let mut buf = Vec::with_capacity(1 << 20);
        let n = (&mut f).take(1 << 20).read_to_end(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        writer.wait_for_capacity(4).await.unwrap();
        writer.put(Bytes::from(buf));
    }
    writer.finish().await.unwrap();
}

async fn raw_get_file(store: &dyn ObjectStore, location: &Path, dest: &FsPath) -> u64 {
    let mut out = tokio::fs::File::create(dest).await.unwrap();
    let mut stream = store.get(location).await.unwrap().into_stream();
    let mut n = 0;
    while let Some(chunk) = stream.try_next().await.unwrap() {
        n += chunk.len() as u64;
        out.write_all(&chunk).await.unwrap();
    }
    out.flush().await.unwrap();
    n
}

/// The large-file and small-file measurements on one backend. `raw` is the same
/// backend without ops-storage; `prefix` is where ops-storage keeps the tenant's
/// objects in it; `plain_dir` (local only) is where plain copies go.
async fn measure(
    label: &str,
    scoped: &Scoped,
    raw: Arc<dyn ObjectStore>,
    work: &FsPath,
    big: &FsPath,
    opts: &Options,
    plain_dir: Option<&FsPath>,
) -> Vec<Row> {
    let bytes = opts.size_mib << 20;
    let mut rows = Vec::new();

    // Large upload.
    eprintln!("{label}: uploading {} MiB…", opts.size_mib);
    let (stored, ours) = timed(scoped.put_file("bench/big.bin", big)).await;
    assert_eq!(stored.unwrap().size, bytes);
    let mut baselines = Vec::new();
    if let Some(dir) = plain_dir {
        let ((), t) = timed(async {
            tokio::fs::copy(big, dir.join("big.bin")).await.unwrap();
        })
        .await;
        baselines.push(("tokio::fs::copy", t));
    }
    let raw_big = Path::from("raw/big.bin");
    let ((), t) = timed(raw_put_file(raw.as_ref(), &raw_big, big)).await;
    baselines.push(("raw object_store multipart", t));
    rows.push(Row {
        what: format!("upload {} MiB in 8 MiB parts", opts.size_mib),
        bytes,
        ours,
        baselines,
    });

    // Large download.
    eprintln!("{label}: downloading {} MiB…", opts.size_mib);
    let dest = work.join("down.bin");
    let (got, ours) = timed(scoped.get_file("bench/big.bin", &dest)).await;
    assert_eq!(got.unwrap().size, bytes);
    let mut baselines = Vec::new();
    if let Some(dir) = plain_dir {
        let ((), t) = timed(async {
            tokio::fs::copy(dir.join("big.bin"), work.join("copy-back.bin"))
                .await
                .unwrap();
        })
        .await;
        baselines.push(("tokio::fs::copy", t));
    }
    let (n, t) = timed(raw_get_file(
        raw.as_ref(),
        &raw_big,
        &work.join("raw-down.bin"),
    ))
    .await;
    assert_eq!(n, bytes);
    baselines.push(("raw object_store get", t));
    rows.push(Row {
        what: format!("download {} MiB", opts.size_mib),
        bytes,
        ours,
        baselines,
    });
    for f in ["down.bin", "copy-back.bin", "raw-down.bin"] {
        let _ = tokio::fs::remove_file(work.join(f)).await;
    }
    scoped.delete("bench/big.bin").await.unwrap();
    raw.delete(&raw_big).await.unwrap();

    // Small files.
    eprintln!("{label}: {} small files…", opts.files);
    let body = Bytes::from(vec![b'x'; SMALL]);
    let small_bytes = (opts.files * SMALL) as u64;
    let (results, ours) = timed(
        futures::stream::iter(0..opts.files)
            .map(|i| {
                let body = body.clone();
                async move { scoped.put(&format!("small/{i:05}.txt"), body).await }
            })
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<_>>(),
    )
    .await;
    assert!(results.iter().all(Result::is_ok));
    let mut baselines = Vec::new();
    if let Some(dir) = plain_dir {
        let small_dir = dir.join("small");
        tokio::fs::create_dir_all(&small_dir).await.unwrap();
        let ((), t) = timed(
            futures::stream::iter(0..opts.files)
                .map(|i| {
                    let path = small_dir.join(format!("{i:05}.txt"));
                    let body = body.clone();
                    async move { tokio::fs::write(path, body).await.unwrap() }
                })
                .buffer_unordered(CONCURRENCY)
                .collect::<()>(),
        )
        .await;
        baselines.push(("tokio::fs::write", t));
    }
    let ((), t) = timed(
        futures::stream::iter(0..opts.files)
            .map(|i| {
                let raw = raw.clone();
                let body = body.clone();
                async move {
                    raw.put(
                        &Path::from(format!("raw/small/{i:05}.txt")),
                        PutPayload::from_bytes(body),
                    )
                    .await
                    .unwrap();
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect::<()>(),
    )
    .await;
    baselines.push(("raw object_store put", t));
    rows.push(Row {
        what: format!("upload {} files of 4 KiB, 16 at a time", opts.files),
        bytes: small_bytes,
        ours,
        baselines,
    });

    let (results, ours) = timed(
        futures::stream::iter(0..opts.files)
            .map(|i| async move { scoped.get(&format!("small/{i:05}.txt")).await })
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<_>>(),
    )
    .await;
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().map(Bytes::len).ok() == Some(SMALL))
    );
    let mut baselines = Vec::new();
    if let Some(dir) = plain_dir {
        let small_dir = dir.join("small");
        let ((), t) = timed(
            futures::stream::iter(0..opts.files)
                .map(|i| {
                    let path = small_dir.join(format!("{i:05}.txt"));
                    async move {
                        assert_eq!(tokio::fs::read(path).await.unwrap().len(), SMALL);
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .collect::<()>(),
        )
        .await;
        baselines.push(("tokio::fs::read", t));
    }
    let ((), t) = timed(
        futures::stream::iter(0..opts.files)
            .map(|i| {
                let raw = raw.clone();
                async move {
                    let got = raw
                        .get(&Path::from(format!("raw/small/{i:05}.txt")))
                        .await
                        .unwrap()
                        .bytes()
                        .await
                        .unwrap();
                    assert_eq!(got.len(), SMALL);
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect::<()>(),
    )
    .await;
    baselines.push(("raw object_store get", t));
    rows.push(Row {
        what: format!("download {} files of 4 KiB, 16 at a time", opts.files),
        bytes: small_bytes,
        ours,
        baselines,
    });
    rows
}

/// The SQLite catalog a platform uses, or (`--memory-catalog`, to see what the
/// catalog costs) the in-memory one.
async fn catalog(work: &FsPath, opts: &Options) -> Arc<dyn Catalog> {
    if opts.memory_catalog {
        return Arc::new(MemoryCatalog::new());
    }
    Arc::new(
        SqliteCatalog::open(work.join("catalog.db").to_str().unwrap())
            .await
            .unwrap(),
    )
}

async fn local(opts: &Options, work: &FsPath, big: &FsPath) {
    let root = work.join("local-store");
    let storage = Storage::builder(root.to_str().unwrap())
        .catalog(catalog(work, opts).await)
        .build()
        .unwrap();
    let scoped = storage.scope(&"bench".parse().unwrap(), &"production".parse().unwrap());
    let raw_root = work.join("raw-store");
    std::fs::create_dir_all(&raw_root).unwrap();
    let raw: Arc<dyn ObjectStore> =
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&raw_root).unwrap());
    let plain = work.join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let mut rows = Vec::new();
    for round in 1..=opts.rounds {
        eprintln!("local: round {round} of {}", opts.rounds);
        let got = measure("local", &scoped, raw.clone(), work, big, opts, Some(&plain)).await;
        keep_best(&mut rows, got);
    }
    print_rows(
        &format!(
            "Local directory (file://, {} catalog) vs plain copies and raw object_store, best of {}",
            if opts.memory_catalog {
                "in-memory"
            } else {
                "SQLite"
            },
            opts.rounds
        ),
        &rows,
    );
}

#[cfg(feature = "s3")]
async fn s3(opts: &Options, work: &FsPath, big: &FsPath) {
    let Ok(endpoint) = std::env::var("OPS_TEST_S3_ENDPOINT") else {
        println!("S3: skipped (OPS_TEST_S3_ENDPOINT is not set; scripts/bench starts moto)\n");
        return;
    };
    let bucket = format!("bench-{}", std::process::id());
    create_bucket(&endpoint, &bucket).await;
    let mut options = ops_storage::S3Options::default();
    options.endpoint = Some(endpoint.clone());
    options.region = Some("us-east-1".into());
    options.access_key_id = Some("testing".into());
    options.secret_access_key = Some("testing".into());
    options.allow_http = Some(true);
    let storage = Storage::builder(&format!("s3://{bucket}"))
        .s3(options)
        .catalog(catalog(work, opts).await)
        .build()
        .unwrap();
    let scoped = storage.scope(&"bench".parse().unwrap(), &"production".parse().unwrap());
    let raw: Arc<dyn ObjectStore> = Arc::new(
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&bucket)
            .with_endpoint(&endpoint)
            .with_region("us-east-1")
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .with_allow_http(true)
            .build()
            .unwrap(),
    );
    let rows = measure("s3", &scoped, raw, work, big, opts, None).await;
    print_rows(
        &format!(
            "S3 (moto on this machine, {} catalog) vs raw object_store on the same bucket, one round",
            if opts.memory_catalog {
                "in-memory"
            } else {
                "SQLite"
            }
        ),
        &rows,
    );
}

#[cfg(feature = "s3")]
async fn create_bucket(endpoint: &str, bucket: &str) {
    let status = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "creating bucket {bucket}: {status}");
}

#[tokio::main]
async fn main() {
    let opts = options();
    let work: PathBuf = tempfile::tempdir().unwrap().keep();
    let big = work.join("source.bin");
    eprintln!("writing a {} MiB source file…", opts.size_mib);
    make_file(&big, opts.size_mib).await;
    let want = |what: &str| opts.only.as_deref().is_none_or(|o| o == what);
    if want("local") {
        local(&opts, &work, &big).await;
    }
    #[cfg(feature = "s3")]
    if want("s3") {
        s3(&opts, &work, &big).await;
    }
    let _ = std::fs::remove_dir_all(&work);
}
