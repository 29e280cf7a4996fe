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
