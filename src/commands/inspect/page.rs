//! The inspector's page: one HTML file holding its style, its script, the graph layout library
//! and the data, so that it opens offline and can be mailed as one attachment. The template,
//! style and script are files beside this one, compiled into the binary.

use serde_json::Value;

/// The page around its parts: the markers below, each once, in this order.
const TEMPLATE: &str = include_str!("page.html");
const STYLE: &str = include_str!("page.css");
const SCRIPT: &str = include_str!("page.js");
/// dagre, the layered (Sugiyama) graph layout that TensorBoard's graph view uses, as npm
/// publishes it; its MIT licence travels with it in the page.
const DAGRE: &str = include_str!("vendor/dagre.min.js");
const DAGRE_LICENSE: &str = include_str!("vendor/LICENSE-dagre");

const MARKERS: [&str; 3] = ["/* style */", "/* data */", "/* scripts */"];

/// The page showing `data`.
pub fn render(data: &Value) -> String {
    let json = serde_json::to_string(data).expect("JSON values serialise");
    // Inside `<script type="application/json">` only `</script` and `<!--` could end or change
    // the element; both are escaped the JSON way, which `JSON.parse` undoes.
    let json = json.replace("</", "<\\/").replace("<!--", "<\\u0021--");
    let scripts = format!(
        "/*! dagre's licence:\n{}*/\n{DAGRE}\n</script>\n<script>\n{SCRIPT}",
        DAGRE_LICENSE.replace("*/", "* /")
    );
    let mut html = String::with_capacity(TEMPLATE.len() + json.len() + scripts.len() + 16_384);
    let mut rest = TEMPLATE;
    for (marker, part) in MARKERS.iter().zip([STYLE, &json, &scripts]) {
        let (before, after) = rest
            .split_once(marker)
            .expect("the page template holds every marker once, in order");
        html += before;
        html += part;
        rest = after;
    }
    html += rest;
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_cannot_end_its_script_element() {
        let page = render(&serde_json::json!({"source": "</script><script>alert(1)</script><!--"}));
        let data = page
            .split_once("<script type=\"application/json\" id=\"data\">")
            .and_then(|(_, rest)| rest.split_once("</script>"))
            .map(|(data, _)| data)
            .expect("the data element");
        let value: Value = serde_json::from_str(data).expect("the data is JSON");
        assert_eq!(value["source"], "</script><script>alert(1)</script><!--");
        assert!(!data.contains("</") && !data.contains("<!--"));
    }
}
