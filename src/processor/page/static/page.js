// The page's writes, and the processor's health. Forms (data-api) and buttons
// (data-post) send JSON to the API and show its answer, or its refusal, in the
// element their data-out names; /health is polled. All of it is set as text
// (textContent): events and subscriptions are anyone's input. The lists are
// htmx panels, rendered and escaped by the server, refreshed after each write.
"use strict";

const HEALTH_EVERY_MS = 2000;

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function shown(value) {
  return value === null || value === undefined ? "" : typeof value === "object" ? JSON.stringify(value) : String(value);
}

async function post(url, body) {
  try {
    const response = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const answer = await response.json().catch(() => null);
    return { ok: response.ok, status: response.status, answer };
  } catch (error) {
    return { ok: false, status: 0, answer: { error: `no answer: ${error.message}`, fields: [] } };
  }
}

// A form's fields as the API's body: empty ones left out, data-json ones parsed.
function formBody(form) {
  const body = {};
  const fields = [];
  for (const field of form.elements) {
    if (!field.name || field.value.trim() === "") continue;
    if (!("json" in field.dataset)) {
      body[field.name] = field.value;
      continue;
    }
    try {
      body[field.name] = JSON.parse(field.value);
    } catch (error) {
      fields.push({ field: field.name, problem: `is not JSON: ${error.message}` });
    }
  }
  return { body, fields };
}

function refusal(output, status, answer) {
  const error = answer && answer.error ? answer.error : "the API gave no error document";
  output.append(element("p", status ? `refused (${status}): ${error}` : error, "bad"));
  const fields = element("ul", undefined, "fields");
  for (const { field, problem } of (answer && answer.fields) || []) {
    const item = element("li");
    item.append(element("code", field), `: ${problem}`);
    fields.append(item);
  }
  output.append(fields);
}

// How each kind of answer is shown, by the data-show of what sent it.
const SHOW = {
  subscription(output, created) {
    output.append(element("p", `created subscription ${created.name}: `), element("code", created.id));
  },
  published(output, published) {
    output.append(element("p", "published:"));
    for (const id of published.ids) output.append(element("code", id, "event-id"));
  },
  report(output, report) {
    const list = element("dl", undefined, "report");
    for (const [key, value] of Object.entries(report)) list.append(element("dt", key), element("dd", shown(value)));
    output.append(list);
  },
  verdicts(output, explanation) {
    const { event, matches, verdicts } = explanation;
    const where = event.stored ? `stored as ${event.id}` : "not stored";
    output.append(
      element("p", `${event.type} from ${event.client_id} (${where}): ${matches} of ${verdicts.length} subscriptions match,`
        + ` as they stood at ${explanation.subscriptions_as_of}`),
    );
    const table = element("table", undefined, "verdicts");
    const head = element("tr");
    for (const title of ["matches", "subscription", "field", "reason", "job"]) head.append(element("th", title));
    table.append(head);
    for (const verdict of verdicts) {
      const row = element("tr", undefined, verdict.matches ? "match" : "miss");
      row.dataset.subscriptionId = verdict.subscription_id;
      for (const cell of [verdict.matches ? "yes" : "no", verdict.name, verdict.field, verdict.reason, verdict.job_id]) {
        row.append(element("td", shown(cell)));
      }
      table.append(row);
    }
    output.append(table);
  },
};

async function send(url, body, output, show) {
  output.replaceChildren(element("p", "sending...", "note"));
  const { ok, status, answer } = await post(url, body);
  output.replaceChildren();
  if (ok) {
    SHOW[show](output, answer);
    htmx.trigger(document.body, "fc:changed");
  } else {
    refusal(output, status, answer);
  }
}

document.addEventListener("submit", (event) => {
  const form = event.target.closest("form[data-api]");
  if (!form) return;
  event.preventDefault();
  const output = document.querySelector(form.dataset.out);
  const { body, fields } = formBody(form);
  if (fields.length) {
    output.replaceChildren();
    refusal(output, 0, { error: "not sent: fix the fields below", fields });
    return;
  }
  send(form.dataset.api, body, output, form.dataset.show);
});

document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-post]");
  if (!button) return;
  const { post: url, body, out, show } = button.dataset;
  send(url, JSON.parse(body), document.querySelector(out), show);
});

async function pollHealth() {
  const panel = document.getElementById("health");
  let report;
  try {
    report = await (await fetch("/health")).json(); // 503 when DOWN, with the same document
  } catch (error) {
    report = { status: "UNREACHABLE", reasons: [error.message] };
  }
  panel.classList.toggle("bad", report.status !== "UP");
  for (const node of panel.querySelectorAll("[data-health]")) {
    const value = report[node.dataset.health];
    node.textContent = Array.isArray(value) ? value.join("; ") : shown(value);
  }
}

pollHealth();
setInterval(pollHealth, HEALTH_EVERY_MS);
