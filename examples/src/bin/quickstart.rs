//! The README's program: templates, a task, a function on its events, its history.
#![allow(clippy::print_stdout)] // a command-line program prints
use ops::prelude::*;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let log = function_fn("log", |event| async move {
        println!("event {} for {:?}", event.ty, event.subject);
        Ok(())
    });
    let platform = Platform::builder()
        .config(PlatformConfig::load("examples/quickstart/platform.toml")?)
        .function(Trigger::on("ops.task.*"), log)
        .start()
        .await?;
    let acme = platform.tenant(&Tenant::parse("acme")?);
    let request = SubmitRequest::new("thumbnail").parameters(json!({ "image": "cat.png" }));
    let task = acme.wait(acme.submit(request).await?).await?;
    println!("task {}: {} ({:?})", task.id, task.status, task.reason);
    for output in acme.outputs(task.id).await? {
        println!("output {} ({} bytes)", output.path, output.size);
    }
    platform.shutdown().await;
    Ok(())
}
