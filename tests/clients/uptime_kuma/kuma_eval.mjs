// Judge HTTP responses the way Uptime Kuma's HTTP, keyword and JSON-query monitors do, with the
// real `jsonata` package (the engine Uptime Kuma uses), under both comparison rules:
//
//   v1   Uptime Kuma 1.23 (the `louislam/uptime-kuma:1` image): server/model/monitor.js
//        evaluates `jsonPath` and passes when `result.toString() === expectedValue`
//        (a boolean `true` is the string "true"; an undefined result throws, so DOWN).
//   v2   Uptime Kuma 2.0: src/util.ts `evaluateJsonQuery` rejects null/undefined, arrays and
//        objects, then evaluates `$.value = $.expected` (operator "==") on
//        `result.toString()` and `expectedValue.toString()`.
//
// Both first check the status code against the monitor's accepted status codes (axios'
// validateStatus): a status outside them is DOWN before any keyword or query is looked at.
// A keyword monitor matches (case-sensitive `String.includes`) on the body as axios parsed it,
// re-serialised with `JSON.stringify`: compact, keys in the order the server sent them.
//
// stdin:  {"cases": [{"id", "monitor": {...}, "status": 200, "body": "<response text>"}]}
// stdout: {"results": [{"id", "text": "<compact JSON text>", "v1": {"up", "msg"}, "v2": {...}}]}

import jsonata from "jsonata";

function checkStatusCode(status, accepted) {
  // Uptime Kuma's checkStatusCode: "200-299" ranges or single codes, as strings.
  for (const range of accepted ?? []) {
    const parts = String(range).split("-").map((s) => parseInt(s, 10));
    if (parts.length === 1 && status === parts[0]) return true;
    if (parts.length === 2 && status >= parts[0] && status <= parts[1]) return true;
  }
  return false;
}

function parseLikeAxios(body) {
  // axios' default transformResponse: JSON.parse the text, keep the text if it is not JSON.
  try {
    return JSON.parse(body);
  } catch {
    return body;
  }
}

async function jsonQueryV1(data, monitor) {
  const result = await jsonata(monitor.jsonPath).evaluate(data);
  // `result.toString()` throws a TypeError for undefined/null: the monitor goes DOWN.
  if (result.toString() === monitor.expectedValue) {
    return { up: true, msg: "expected value is found" };
  }
  return { up: false, msg: `value is not equal to expected value, value was: [${result}]` };
}

async function jsonQueryV2(data, monitor) {
  const operator = monitor.jsonPathOperator ?? "==";
  let response = data;
  if (typeof data === "string") {
    try {
      response = JSON.parse(data);
    } catch {
      response = data;
    }
  }
  response = monitor.jsonPath ? await jsonata(monitor.jsonPath).evaluate(response) : response;
  if (response === null || response === undefined) {
    throw new Error("Empty or undefined response");
  }
  if (Array.isArray(response)) {
    throw new Error(`JSON query returned the array ${JSON.stringify(response)}`);
  }
  if (typeof response === "object" || typeof response === "function") {
    throw new Error(`evaluated response is of type ${typeof response}`);
  }
  const comparisons = {
    "==": "$.value = $.expected",
    "!=": "$.value != $.expected",
    contains: "$contains($.value, $.expected)",
    ">": "$number($.value) > $number($.expected)",
    ">=": "$number($.value) >= $number($.expected)",
    "<": "$number($.value) < $number($.expected)",
    "<=": "$number($.value) <= $number($.expected)",
  };
  if (!(operator in comparisons)) throw new Error(`Invalid condition ${operator}`);
  const status = await jsonata(comparisons[operator]).evaluate({
    value: response.toString(),
    expected: monitor.expectedValue.toString(),
  });
  if (status === undefined) throw new Error("Query evaluation returned undefined");
  return {
    up: status === true,
    msg: `JSON query ${status ? "passes" : "does not pass"} (comparing ${response} ${operator} ${monitor.expectedValue})`,
  };
}

async function judge(monitor, status, body, version) {
  try {
    if (!checkStatusCode(status, monitor.accepted_statuscodes)) {
      return { up: false, msg: `status ${status} is not accepted` };
    }
    if (monitor.type === "http") return { up: true, msg: `${status}` };
    let data = parseLikeAxios(body);
    if (monitor.type === "keyword") {
      if (typeof data !== "string") data = JSON.stringify(data);
      const found = data.includes(monitor.keyword);
      const up = found === !monitor.invertKeyword;
      return { up, msg: `keyword is ${found ? "present" : "not present"}` };
    }
    if (monitor.type === "json-query") {
      return version === "v1" ? await jsonQueryV1(data, monitor) : await jsonQueryV2(data, monitor);
    }
    return { up: false, msg: `unknown monitor type ${monitor.type}` };
  } catch (err) {
    return { up: false, msg: `error: ${err.message}` };
  }
}

function compactText(body) {
  const data = parseLikeAxios(body);
  return typeof data === "string" ? data : JSON.stringify(data);
}

let input = "";
for await (const chunk of process.stdin) input += chunk;
const { cases } = JSON.parse(input);
const results = [];
for (const c of cases) {
  results.push({
    id: c.id,
    text: compactText(c.body),
    v1: await judge(c.monitor, c.status, c.body, "v1"),
    v2: await judge(c.monitor, c.status, c.body, "v2"),
  });
}
process.stdout.write(JSON.stringify({ results }));
