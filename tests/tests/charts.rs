//! Structured results in the full guest: a matplotlib figure's `chart` and a
//! DataFrame's `data`, in the shapes E2B's SDK reads (namespace sandbox, root).

use cellbox::Executor;
use cellbox_tests::namespace_session;
use serde_json::{Value, json};

async fn chart(sandbox: &mut impl Executor, code: &str) -> Value {
    let execution = sandbox.run(code).await.unwrap();
    assert!(execution.error.is_none(), "{execution:?}");
    let result = execution
        .results
        .iter()
        .find(|r| r.png.is_some())
        .expect("a figure");
    result.chart.clone().expect("a chart next to the PNG")
}

#[tokio::test]
async fn figures_come_with_their_chart() {
    let mut s = namespace_session().await;
    s.run("import matplotlib.pyplot as plt").await.unwrap();

    let bar = chart(
        &mut s,
        "plt.bar(['apples', 'pears'], [3, 5], label='fruit'); plt.title('Stock');\
         plt.xlabel('Kind'); plt.ylabel('Weight (kg)'); plt.show()",
    )
    .await;
    assert_eq!(bar["type"], "bar");
    assert_eq!(bar["title"], "Stock");
    assert_eq!(
        (bar["y_label"].clone(), bar["y_unit"].clone()),
        (json!("Weight (kg)"), json!("kg"))
    );
    assert_eq!(
        bar["elements"],
        json!([{"label": "apples", "group": "fruit", "value": 3.0}, {"label": "pears", "group": "fruit", "value": 5.0}])
    );

    let line = chart(
        &mut s,
        "plt.plot([0, 1, 2], [1, 4, 9], label='squares'); plt.xlabel('t [s]'); plt.show()",
    )
    .await;
    assert_eq!(line["type"], "line");
    assert_eq!(line["x_unit"], "s");
    assert_eq!(line["x_scale"], "linear");
    assert_eq!(line["elements"][0]["label"], "squares");
    assert_eq!(
        line["elements"][0]["points"],
        json!([[0.0, 1.0], [1.0, 4.0], [2.0, 9.0]])
    );
    assert!(!line["x_ticks"].as_array().unwrap().is_empty());
    assert_eq!(
        line["x_ticks"].as_array().unwrap().len(),
        line["x_tick_labels"].as_array().unwrap().len()
    );

    let scatter = chart(
        &mut s,
        "plt.scatter([1, 2], [3, 4]); plt.yscale('log'); plt.show()",
    )
    .await;
    assert_eq!(
        (scatter["type"].clone(), scatter["y_scale"].clone()),
        (json!("scatter"), json!("log"))
    );
    assert_eq!(
        scatter["elements"][0]["points"],
        json!([[1.0, 3.0], [2.0, 4.0]])
    );

    let pie = chart(&mut s, "plt.pie([1, 3], labels=['a', 'b']); plt.show()").await;
    assert_eq!(pie["type"], "pie");
    assert_eq!(pie["elements"][0]["label"], "a");
    assert_eq!(pie["elements"][1]["angle"], 270.0);
    // Rounded as E2B gives it (matplotlib says 323.99999141693115).
    let tenth = chart(&mut s, "plt.pie([1, 9]); plt.show()").await;
    assert_eq!(tenth["elements"][1]["angle"], 324.0);

    // A date axis: ticks and points as ISO 8601 text.
    let dated = chart(
        &mut s,
        "import datetime as dt; days = [dt.datetime(2024, 1, d) for d in (1, 2, 3)]\n\
         plt.plot(days, [1, 4, 9]); plt.show()",
    )
    .await;
    assert_eq!(dated["x_scale"], "datetime");
    let ticks = dated["x_ticks"].as_array().unwrap();
    assert!(
        !ticks.is_empty()
            && ticks
                .iter()
                .all(|t| t.as_str().is_some_and(|t| t.starts_with("2024-01-"))),
        "{ticks:?}"
    );
    assert_eq!(
        dated["elements"][0]["points"][0][0],
        "2024-01-01T00:00:00+00:00"
    );

    let boxes = chart(
        &mut s,
        "plt.boxplot([[1, 2, 3, 4, 5, 40]], labels=['x']); plt.show()",
    )
    .await;
    assert_eq!(boxes["type"], "box_and_whisker");
    let b = &boxes["elements"][0];
    assert_eq!(
        (
            b["label"].clone(),
            b["median"].clone(),
            b["outliers"].clone()
        ),
        (json!("x"), json!(3.5), json!([40.0]))
    );

    let two = chart(
        &mut s,
        "fig, (a, b) = plt.subplots(1, 2); a.plot([1, 2]); b.bar(['q'], [1]); fig.suptitle('Both'); plt.show()",
    )
    .await;
    assert_eq!(two["type"], "superchart");
    assert_eq!(two["title"], "Both");
    let kinds: Vec<&str> = two["elements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["line", "bar"]);
    s.close().await.unwrap();
}

/// As in E2B: a PIL image shown, saved to a file or left as a cell's value
/// comes back as a PNG.
#[tokio::test]
async fn pil_images_come_back_as_png() {
    let mut s = namespace_session().await;
    s.run("from PIL import Image; image = Image.new('RGB', (8, 8), 'red')")
        .await
        .unwrap();
    for code in [
        "image.save('/tmp/red.png'); print('saved')",
        "image.show()",
        "image",
    ] {
        let execution = s.run(code).await.unwrap();
        assert!(execution.error.is_none(), "{code}: {execution:?}");
        let png = execution.results.iter().find_map(|r| r.png.as_deref());
        assert!(
            png.is_some_and(|p| p.starts_with("iVBOR")),
            "{code}: {execution:?}"
        );
    }
    let saved = s.run("Image.open('/tmp/red.png').size").await.unwrap();
    assert_eq!(saved.text(), Some("(8, 8)"), "the file is written too");
    let to_buffer = s
        .run("import io; buffer = io.BytesIO(); image.save(buffer, 'PNG'); len(buffer.getvalue()) > 0")
        .await
        .unwrap();
    assert!(
        to_buffer.results.iter().all(|r| r.png.is_none()) && to_buffer.text() == Some("True"),
        "saving to a buffer shows nothing: {to_buffer:?}"
    );
    s.close().await.unwrap();
}

#[tokio::test]
async fn dataframes_come_with_their_data() {
    let mut s = namespace_session().await;
    let execution = s
        .run("import pandas as pd; pd.DataFrame({'a': [1, 2], 'b': ['x', None], 'c': [0.5, float('nan')]})")
        .await
        .unwrap();
    let main = execution.main_result().expect("a main result");
    assert!(
        execution.logs.stderr.is_empty(),
        "no formatter warnings: {:?}",
        execution.logs.stderr
    );
    assert!(main.html.as_deref().unwrap_or_default().contains("<table"));
    let plain = s.run("40 + 2").await.unwrap();
    assert!(plain.logs.stderr.is_empty(), "{:?}", plain.logs.stderr);
    assert_eq!(
        (
            plain.text(),
            plain.results[0].chart.clone(),
            plain.results[0].data.clone()
        ),
        (Some("42"), None, None)
    );
    assert_eq!(
        main.data,
        Some(json!({"a": [1, 2], "b": ["x", null], "c": [0.5, null]}))
    );
    s.close().await.unwrap();
}
