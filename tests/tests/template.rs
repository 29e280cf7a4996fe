//! Custom templates (`runtime/src/template/`): an e2b.Dockerfile built into a
//! layer (with network during the build only), cached by content, used by
//! sandboxes, stacked, listed and deleted; bad Dockerfiles and failing steps
//! are clear errors naming the line.

use std::collections::BTreeMap;
use std::path::Path;

use cellbox::template::{self, BuildOptions, TemplateStore};
use cellbox::{Sandbox, SandboxOptions};

const DOCKERFILE: &str = r#"# the test's template
ARG COWSAY=0.0
FROM e2bdev/code-interpreter:latest
ENV APP_MODE=test \
    GREETING="hello world"
WORKDIR /opt/app
COPY data ./data
COPY tool.sh /usr/local/bin/
RUN pip install --no-cache-dir cowsay==${COWSAY} && echo "$GREETING" > greeting.txt
RUN rm /etc/matplotlibrc
RUN cp /bin/true /usr/local/bin/suid-true && chmod 4755 /usr/local/bin/suid-true
USER user
RUN id -un > /tmp/who && test "$(cat /tmp/who)" = user
"#;

fn context(dockerfile: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("e2b.Dockerfile"), dockerfile).unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/answer.txt"), "42\n").unwrap();
    let tool = dir.path().join("tool.sh");
    std::fs::write(&tool, "#!/bin/sh\necho tool ran\n").unwrap();
    std::process::Command::new("chmod")
        .arg("755")
        .arg(&tool)
        .status()
        .unwrap();
    dir
}

fn options(name: &str, dir: &Path) -> BuildOptions {
    let mut options = BuildOptions::new(name, dir.join("e2b.Dockerfile"));
    options.build_args = BTreeMap::from([("COWSAY".into(), "6.1".into())]);
    options
}

async fn run(sandbox: &Sandbox, code: &str) -> String {
    let execution = sandbox.run_code(code).await.unwrap();
    assert!(execution.error.is_none(), "{code}: {execution:?}");
    execution.text().unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_template_is_built_cached_used_stacked_and_deleted() {
    let store = TemplateStore::open(&cellbox::default_cache_dir());
    let _ = store.delete("cellbox-test-stacked");
    let dir = context(DOCKERFILE);
    let info = template::build(options("cellbox-test-demo", dir.path()))
        .await
        .expect("building the template (needs root and the registry)");
    assert_eq!(info.env.get("APP_MODE").map(String::as_str), Some("test"));
    assert_eq!(info.workdir.as_deref(), Some("/opt/app"));
    assert!(
        !info.env.contains_key("COWSAY"),
        "ARGs are the build's only"
    );

    let again = template::build(options("cellbox-test-demo", dir.path()))
        .await
        .unwrap();
    assert_eq!(
        (again.layers.clone(), again.build_seconds),
        (info.layers.clone(), 0.0),
        "cached"
    );

    let s = Sandbox::create(SandboxOptions::default().with_template("cellbox-test-demo"))
        .await
        .unwrap();
    assert_eq!(
        run(&s, "import os, cowsay; (os.getcwd(), os.environ['APP_MODE'], open('greeting.txt').read(), open('data/answer.txt').read())").await,
        "('/opt/app', 'test', 'hello world\\n', '42\\n')"
    );
    assert_eq!(
        run(&s, "os.path.exists('/etc/matplotlibrc')").await,
        "False",
        "RUN rm is kept"
    );
    assert_eq!(
        run(&s, "import subprocess; subprocess.run('tool.sh; stat -c \"%U %a\" /usr/local/bin/tool.sh data/answer.txt', shell=True, capture_output=True, text=True).stdout").await,
        "'tool ran\\nroot 755\\nroot 644\\n'"
    );
    assert_eq!(
        run(&s, "import urllib.request\ntry:\n    urllib.request.urlopen('https://pypi.org/simple/', timeout=5); r = 'reached'\nexcept OSError as e:\n    r = 'no network'\nr").await,
        "'no network'",
        "network was the build's only"
    );
    s.close().await.unwrap();

    let stacked = context("FROM cellbox-test-demo\nRUN echo two > /opt/app/second.txt\n");
    let info = template::build(BuildOptions::new(
        "cellbox-test-stacked",
        stacked.path().join("e2b.Dockerfile"),
    ))
    .await
    .unwrap();
    assert_eq!(info.layers.len(), 2);
    let s = Sandbox::create(SandboxOptions::default().with_template("cellbox-test-stacked"))
        .await
        .unwrap();
    assert_eq!(
        run(
            &s,
            "open('second.txt').read() + open('greeting.txt').read()"
        )
        .await,
        "'two\\nhello world\\n'"
    );
    s.close().await.unwrap();

    let names: Vec<String> = store.list().unwrap().into_iter().map(|t| t.name).collect();
    assert!(
        names.contains(&"cellbox-test-demo".to_string())
            && names.contains(&"cellbox-test-stacked".to_string()),
        "{names:?}"
    );
    assert!(
        store
            .delete("cellbox-test-demo")
            .unwrap_err()
            .to_string()
            .contains("base of cellbox-test-stacked")
    );
    assert!(store.delete("cellbox-test-stacked").unwrap());
    assert!(store.delete("cellbox-test-demo").unwrap());
    let gone = Sandbox::create(SandboxOptions::default().with_template("cellbox-test-demo")).await;
    assert!(gone.unwrap_err().to_string().contains("no template named"));
}

#[tokio::test]
async fn bad_dockerfiles_and_failing_steps_name_the_line() {
    let dir = context("FROM e2bdev/code-interpreter\nEXPOSE 8080\n");
    let error = template::build(options("cellbox-test-bad", dir.path()))
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("line 2: EXPOSE is not supported"),
        "{error}"
    );

    let dir = context("FROM base\nRUN echo fine\nRUN echo broken >&2; exit 3\n");
    let error = template::build(options("cellbox-test-bad", dir.path()))
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("line 3: RUN")
            && message.contains("exit code 3")
            && message.contains("broken"),
        "{message}"
    );

    let dir = context("FROM base\nCOPY ../../etc/passwd /x\n");
    let error = template::build(options("cellbox-test-bad", dir.path()))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("line 2: COPY ../../etc/passwd"),
        "{error}"
    );

    let store = TemplateStore::open(&cellbox::default_cache_dir());
    assert!(
        store.get("cellbox-test-bad").is_err(),
        "nothing is recorded for a failed build"
    );
}
