//! `plinth bootenvs import-iso`: extracts an installer image into the local
//! file root and pins its checksum on the bootenv.

use crate::objects::encode_key;
use crate::{Client, ClientError};
use clap::ArgMatches;
use reqwest::Method;
use std::path::PathBuf;

/// `plinth bootenvs import-iso NAME IMAGE`.
pub(crate) async fn import_iso(c: &Client, m: &ArgMatches) -> Result<String, ClientError> {
    let name = m.get_one::<String>("key").cloned().unwrap_or_default();
    let image = m.get_one::<PathBuf>("image").cloned().unwrap_or_default();
    let path = format!("/api/v1/bootenvs/{}", encode_key(&name));
    let bootenv: plinth_model::BootEnv = plinth_model::decode(c.call(Method::GET, &path, None, None).await?.body)
        .map_err(|e| ClientError::Input(format!("the server sent an unreadable bootenv: {e}")))?;
    let source = bootenv.source.clone();
    let expected = m
        .get_one::<String>("sha256")
        .cloned()
        .or_else(|| source.as_ref().map(|s| s.sha256.clone()).filter(|s| !s.is_empty()))
        .ok_or_else(|| {
            ClientError::Input(format!(
                "bootenv `{name}` pins no SHA-256 for its image; pass --sha256 with the value from the distribution's checksum file (SHA256SUMS)"
            ))
        })?;
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ClientError::Input(format!("--sha256 `{expected}` is not 64 hex digits")));
    }
    if !image.is_file() {
        return Err(ClientError::Input(format!("{} is not a file", image.display())));
    }
    let root = crate::args::file_root(m);
    let dest = root.join(&name);
    let keep = m.get_flag("keep-image") || source.as_ref().is_some_and(|s| s.keep_image);
    let file_name = source
        .as_ref()
        .map(|s| s.file.clone())
        .filter(|f| !f.is_empty() && !f.contains('/'))
        .or_else(|| image.file_name().map(|f| f.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "image.iso".into());
    let (img, d, f) = (image.clone(), dest.clone(), file_name.clone());
    let summary = tokio::task::spawn_blocking(move || -> Result<plinth_iso::Summary, String> {
        let summary = plinth_iso::import(&img, &expected, &d).map_err(|e| e.to_string())?;
        if keep {
            let target = d.join(&f);
            let same =
                std::fs::metadata(&target).ok().map(|m| m.len()) == std::fs::metadata(&img).ok().map(|m| m.len());
            if !same {
                let tmp = d.join(format!(".{f}.plinth-tmp"));
                std::fs::copy(&img, &tmp).map_err(|e| format!("cannot copy the image: {e}"))?;
                std::fs::rename(&tmp, &target).map_err(|e| format!("cannot keep the image: {e}"))?;
            }
        }
        Ok(summary)
    })
    .await
    .map_err(|e| ClientError::Local(e.to_string()))?
    .map_err(ClientError::Local)?;

    // What the bootenv boots must now be in the file root, for at least one
    // architecture; report the rest.
    let mut sets = vec![("default".to_owned(), bootenv.kernel.clone(), bootenv.initrds.clone())];
    for v in &bootenv.variants {
        sets.push((
            format!("{:?}/{:?}", v.arch, v.firmware).to_lowercase(),
            v.kernel.clone().or_else(|| bootenv.kernel.clone()),
            v.initrds.clone().unwrap_or_else(|| bootenv.initrds.clone()),
        ));
    }
    let mut ready = Vec::new();
    let mut lacking = Vec::new();
    for (label, kernel, initrds) in sets {
        let missing: Vec<String> = kernel.into_iter().chain(initrds).filter(|p| !root.join(p).is_file()).collect();
        if missing.is_empty() {
            ready.push(label);
        } else {
            lacking.push(format!("{label}: {}", missing.join(", ")));
        }
    }
    let counts = format!(
        "{} files written, {} already in place, {} symbolic links skipped",
        summary.written, summary.unchanged, summary.symlinks
    );
    if ready.is_empty() {
        return Err(ClientError::Local(format!(
            "extracted {} into {} ({counts}), but the image lacks what bootenv `{name}` boots ({}); is it the right image?",
            image.display(),
            dest.display(),
            lacking.join("; ")
        )));
    }
    let pinned =
        source.as_ref().is_some_and(|s| s.sha256 == summary.sha256 && s.keep_image == keep && s.file == file_name);
    // Pinning the image is the site's change: on a content pack's bootenv
    // it makes the bootenv the site's override (which upgrades then keep).
    let from_pack = bootenv.meta.get(plinth_model::meta::PACK).cloned();
    if !pinned {
        let patch = serde_json::json!({"source": {"file": file_name, "sha256": summary.sha256, "keep_image": keep}});
        let target = if from_pack.is_some() { format!("{path}?override=true") } else { path.clone() };
        c.call(Method::PATCH, &target, Some(&patch), None).await?;
    }
    let mut out =
        format!("imported {} into {}: {counts}\nready: {}\n", image.display(), dest.display(), ready.join(", "));
    if let (false, Some(pack)) = (pinned, &from_pack) {
        out.push_str(&format!("bootenv `{name}` now pins this image as the site's override of pack `{pack}`\n"));
    }
    if !lacking.is_empty() {
        out.push_str(&format!("not in this image: {}\n", lacking.join("; ")));
    }
    Ok(out)
}
