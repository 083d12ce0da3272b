//! The model worker's entry point; trunk builds it for wasm32 (`data-type="worker"`).

#[cfg(target_arch = "wasm32")]
fn main() {
    itera_web::worker::start();
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    eprintln!("the worker runs in a browser: build the page with trunk (see the README)");
    std::process::exit(2);
}
