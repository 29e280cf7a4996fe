//! The full guest (guest-init + IPython kernel on the Debian root file
//! system) in the namespace sandbox: the behaviour every heavy backend shares
//! (`cellbox_tests::heavy`), and the guest's ext4 image for the microVM.

use cellbox::Backend;

cellbox_tests::heavy_backend_tests!(Backend::Namespace);

#[tokio::test]
async fn the_same_guest_becomes_an_ext4_image() {
    let cache = cellbox::default_cache_dir();
    let artifacts = tokio::task::spawn_blocking(move || {
        let guest = cellbox::guest::GuestArtifacts::ensure(&cache, &Default::default())?;
        let image = guest.ext4_image(&Default::default())?;
        Ok::<_, cellbox::Error>((guest, image))
    })
    .await
    .unwrap();
    let (guest, image) = artifacts.expect("guest artefacts and image");
    let stat = std::process::Command::new("debugfs")
        .args(["-R", "stat /usr/sbin/init"])
        .arg(&image)
        .output()
        .expect("debugfs (e2fsprogs)");
    let text = String::from_utf8_lossy(&stat.stdout);
    let size = std::fs::metadata(guest.layer.join("sbin/init"))
        .unwrap()
        .len();
    assert!(
        text.contains(&format!("Size: {size}")),
        "guest-init in the image: {text}"
    );
    let fsck = std::process::Command::new("e2fsck")
        .arg("-fn")
        .arg(&image)
        .status()
        .unwrap();
    assert!(fsck.success(), "the image is a clean ext4 file system");
}
