//! Every crate of the workspace could be published as it is: each package
//! says what it is, under which license, and where its source lives, and
//! the `ferry` binary is what `cargo install --path .` installs.

use std::process::Command;

fn metadata() -> serde_json::Value {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata JSON")
}

#[test]
fn every_package_has_a_description_license_repository_and_keywords() {
    let meta = metadata();
    let packages = meta["packages"].as_array().unwrap();
    let names: Vec<&str> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for crate_name in [
        "ferry",
        "ferry-proto",
        "ferry-storage",
        "ferry-broker",
        "ferry-client",
        "ferry-testkit",
        "ferry-bench",
        "ferry-lab",
    ] {
        assert!(
            names.contains(&crate_name),
            "{crate_name} missing: {names:?}"
        );
    }
    for p in packages {
        let name = p["name"].as_str().unwrap();
        for field in ["description", "license", "repository"] {
            let value = p[field].as_str().unwrap_or("");
            assert!(!value.is_empty(), "{name} has no {field}");
        }
        assert!(
            !p["keywords"].as_array().unwrap().is_empty(),
            "{name} has no keywords"
        );
    }
}

#[test]
fn cargo_install_from_the_root_installs_the_ferry_binary() {
    let meta = metadata();
    let root = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "ferry")
        .expect("the root package");
    let bins: Vec<&str> = root["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(bins, ["ferry"]);
    assert_eq!(root["readme"], "README.md");
}
