// The dashboard playground: Chat / Compare / Blend / Judge / Failover over WS /ws/v1/orchestrate,
// using the dashboard session (the socket's cookie), streaming every model's answer into its own
// card. Failover sends the socket's plain "chat" message with "fallbacks" and shows the route the
// gateway took (its "done" frame lists every attempt); in sandbox mode admins can break and
// restore sandbox providers through a small CSRF-protected dashboard view. A dropped socket is
// opened again by itself.
(function () {
  "use strict";

  const form = document.getElementById("playground-form");
  if (!form) return;
  const statusLine = document.getElementById("playground-status");
  const results = document.getElementById("results");
  const finalBox = document.getElementById("final");
  const totals = document.getElementById("totals");
  const runButton = document.getElementById("run-button");
  const stopButton = document.getElementById("stop-button");
  const tabs = Array.from(document.querySelectorAll('[role="tab"][data-mode]'));
  const attemptsList = document.getElementById("failover-attempts");
  const answered = document.getElementById("failover-answered");
  const history = document.getElementById("route-history");
  const sandboxList = document.querySelector(".sandbox-provider-list");
  const sandboxStatus = document.getElementById("sandbox-status");
  let socket = null;
  let ready = false;
  let running = null; // the client id of the running run
  let counter = 0;
  let failovers = 0; // rows in the route history
  const cards = new Map(); // candidate index → card

  function usd(micros) {
    return "$" + (micros / 1e6).toFixed(6);
  }

  function setMode(mode) {
    form.dataset.mode = mode;
    tabs.forEach((tab) => {
      const selected = tab.dataset.mode === mode;
      tab.setAttribute("aria-selected", String(selected));
      // Roving tabindex: Tab reaches the selected tab only; arrow keys move between tabs.
      tab.tabIndex = selected ? 0 : -1;
      if (selected) form.setAttribute("aria-labelledby", tab.id);
    });
    const show = {
      ".only-chat": mode === "chat",
      ".only-multi": mode !== "chat" && mode !== "failover",
      ".only-failover": mode === "failover",
      ".only-blend": mode === "blend",
      ".only-judge": mode === "judge" || (mode === "blend" && form.strategy.value === "best-of"),
    };
    Object.entries(show).forEach(([selector, visible]) => {
      document.querySelectorAll(selector).forEach((el) => { el.hidden = !visible; });
    });
  }

  // The WAI-ARIA tabs pattern: arrows move (and select, the panel is one form), Home/End jump.
  function onTabKey(event) {
    const index = tabs.indexOf(event.currentTarget);
    let next = null;
    if (event.key === "ArrowRight") next = (index + 1) % tabs.length;
    else if (event.key === "ArrowLeft") next = (index - 1 + tabs.length) % tabs.length;
    else if (event.key === "Home") next = 0;
    else if (event.key === "End") next = tabs.length - 1;
    if (next === null) return;
    event.preventDefault();
    setMode(tabs[next].dataset.mode);
    tabs[next].focus();
  }

  // A dropped socket (a deploy restarts the server, a network blip) is opened again after 1 s,
  // then 2, 4 … up to 15 s between tries; a refused session (4401: signed out) is not.
  const CLOSE_UNAUTHENTICATED = 4401;
  const RETRY_FIRST_MS = 1000;
  const RETRY_MAX_MS = 15000;
  const SESSION_WAIT_MS = 3000;
  let retryMs = RETRY_FIRST_MS;

  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    const opened = new WebSocket(scheme + window.location.host + form.dataset.socketPath);
    socket = opened;
    opened.addEventListener("message", (event) => handle(JSON.parse(event.data)));
    opened.addEventListener("open", () => {
      // A signed-in page's socket is ready at once; a session that ended meanwhile never is.
      window.setTimeout(() => {
        if (!ready && opened.readyState === WebSocket.OPEN) {
          statusLine.textContent = "Signed out. Reload the page to sign in again.";
        }
      }, SESSION_WAIT_MS);
    });
    opened.addEventListener("close", (event) => {
      ready = false;
      const interrupted = running !== null;
      if (interrupted) finish();
      if (event.code === CLOSE_UNAUTHENTICATED) {
        statusLine.textContent = "Signed out. Reload the page to sign in again.";
        return;
      }
      const seconds = Math.round(retryMs / 1000);
      statusLine.textContent = (interrupted ? "Connection lost during the run" : "Disconnected") +
        ". Reconnecting in " + seconds + " s…";
      window.setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
    });
  }

  function card(index, model) {
    let entry = cards.get(index);
    if (entry) return entry;
    const article = document.createElement("article");
    article.className = "result-card";
    article.dataset.model = model;
    const header = document.createElement("header");
    const title = document.createElement("strong");
    title.textContent = model;
    header.appendChild(title);
    const text = document.createElement("pre");
    text.className = "answer";
    const stats = document.createElement("footer");
    stats.className = "result-stats muted";
    stats.textContent = "streaming…";
    article.append(header, text, stats);
    results.appendChild(article);
    entry = { article, text, stats };
    cards.set(index, entry);
    return entry;
  }

  function describe(result) {
    const parts = [
      result.usage.prompt_tokens + " + " + result.usage.completion_tokens + " tokens",
      usd(result.cost.micros),
      result.latency_ms + " ms",
    ];
    if (result.ttft_ms !== null && result.ttft_ms !== undefined) parts.push("first token " + result.ttft_ms + " ms");
    return parts.join(" · ");
  }

  function showFinal(title, content, stats) {
    finalBox.hidden = false;
    finalBox.replaceChildren();
    const heading = document.createElement("h3");
    heading.textContent = title;
    const text = document.createElement("pre");
    text.className = "answer";
    text.textContent = content;
    finalBox.append(heading, text);
    if (stats) {
      const footer = document.createElement("p");
      footer.className = "muted";
      footer.textContent = stats;
      finalBox.appendChild(footer);
    }
    return text;
  }

  function attemptText(attempt) {
    const what = attempt.status === "ok" ? "answered"
      : attempt.status === "skipped" ? "skipped (" + (attempt.error_code || "unavailable") + ")"
        : "failed (" + (attempt.error_code || "error") + ")";
    return attempt.model + " (" + attempt.provider + ") — " + what + " · " + attempt.latency_ms + " ms";
  }

  function showRoute(frame) {
    const attempts = (frame.route && frame.route.attempts) || [];
    attemptsList.replaceChildren();
    attempts.forEach((attempt) => {
      const item = document.createElement("li");
      item.className = "attempt attempt-" + attempt.status;
      item.dataset.status = attempt.status;
      item.dataset.model = attempt.model;
      item.textContent = attemptText(attempt);
      attemptsList.appendChild(item);
    });
    const fellBack = attempts.length > 1;
    answered.className = fellBack ? "fell-back" : "";
    answered.textContent = "Answered by " + frame.model + (fellBack
      ? " after " + (attempts.length - 1) + " failed or skipped attempt" + (attempts.length > 2 ? "s" : "") + "."
      : ", the primary model.");
    addHistory(frame.route && frame.route.chain, attempts.map(attemptText).join("; "), frame.model, usd(frame.cost.micros));
  }

  function showRouteError(error) {
    attemptsList.replaceChildren();
    answered.className = "route-failed";
    answered.textContent = "No model answered: " + error.message;
    addHistory(null, error.code || "error", "—", usd(0));
  }

  function addHistory(chain, attempts, model, cost) {
    failovers += 1;
    const empty = history.querySelector(".empty-row");
    if (empty) empty.remove();
    const row = document.createElement("tr");
    const cells = [String(failovers), (chain || currentChain()).join(" → "), attempts, model, cost];
    cells.forEach((text) => {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.appendChild(cell);
    });
    history.prepend(row); // newest first
  }

  function currentChain() {
    const chain = [form.failover_primary.value];
    form.querySelectorAll('select[name="failover_fallback"]').forEach((select) => {
      if (select.value && !chain.includes(select.value)) chain.push(select.value);
    });
    return chain;
  }

  function handle(frame) {
    if (frame.type === "ready") {
      ready = true;
      retryMs = RETRY_FIRST_MS;
      statusLine.textContent = "Ready.";
      return;
    }
    if (running === null || frame.id !== running) {
      if (frame.type === "error") statusLine.textContent = frame.error.message;
      return;
    }
    switch (frame.type) {
      case "run":
        statusLine.textContent = "Running " + frame.request_id + "…";
        frame.models.forEach((model, index) => card(index, model));
        break;
      case "delta":
        if (form.dataset.mode === "chat" || form.dataset.mode === "failover") {
          card(0, frame.model || "").text.textContent += frame.text;
        } else {
          card(frame.index, frame.model).text.textContent += frame.text;
        }
        break;
      case "model_done": {
        const entry = card(frame.index, frame.model);
        if (frame.error) {
          entry.article.classList.add("failed");
          entry.stats.textContent = "failed: " + frame.error.message;
        } else {
          entry.stats.textContent = describe(frame);
        }
        break;
      }
      case "synthesis_delta":
        if (finalBox.hidden) showFinal("Blended answer (" + frame.model + ")", "", "");
        finalBox.querySelector("pre").textContent += frame.text;
        break;
      case "synthesis_done":
        showFinal("Blended answer (" + frame.model + ")", frame.content, describe(frame));
        break;
      case "verdict": {
        const lines = frame.ranking.map((r) =>
          "#" + r.rank + " " + (r.model || "candidate " + r.index) + " — " + r.overall + "/10: " + r.rationale);
        showFinal("Judge's ranking (" + frame.judge.model + ")", lines.join("\n"), "");
        frame.ranking.forEach((r) => {
          const entry = cards.get(r.index);
          if (entry) entry.stats.textContent += " · rank " + r.rank + " (" + r.overall + "/10)";
        });
        break;
      }
      case "done":
        if (form.dataset.mode === "failover") {
          const entry = card(0, frame.model);
          entry.article.dataset.model = frame.model;
          entry.article.querySelector("header strong").textContent = frame.model;
          entry.stats.textContent = describe({ ...frame, ttft_ms: null });
          showRoute(frame);
          totals.textContent = "";
        } else if (form.dataset.mode === "chat") {
          card(0, frame.model).stats.textContent = describe({ ...frame, ttft_ms: null });
          totals.textContent = "";
        } else {
          totals.textContent = "Total: " + frame.totals.calls + " calls, " + usd(frame.totals.cost.micros) +
            ", " + frame.totals.latency_ms + " ms.";
        }
        statusLine.textContent = "Done.";
        finish();
        break;
      case "error":
        statusLine.textContent = "Error: " + frame.error.message;
        if (form.dataset.mode === "failover") {
          const entry = cards.get(0);
          if (entry) {
            entry.article.classList.add("failed");
            entry.stats.textContent = "failed: " + frame.error.message;
          }
          showRouteError(frame.error);
        }
        finish();
        break;
      case "cancelled":
        statusLine.textContent = "Stopped.";
        finish();
        break;
      default:
        break;
    }
  }

  function finish() {
    running = null;
    runButton.disabled = false;
    stopButton.disabled = true;
    refreshRuns();
  }

  // Compare, Blend and Judge runs are recorded: show the new one under "Recent runs".
  function refreshRuns() {
    const section = document.getElementById("recent-runs");
    const mode = form.dataset.mode;
    if (!section || !window.htmx || mode === "chat" || mode === "failover") return;
    window.htmx.ajax("GET", section.dataset.refreshUrl, { target: "#recent-runs", swap: "outerHTML" });
  }

  function message(mode, id) {
    const content = form.prompt.value;
    const body = { type: mode, id, messages: [{ role: "user", content }] };
    const maxTokens = parseInt(form.max_tokens.value, 10);
    if (maxTokens > 0) body.max_tokens = maxTokens;
    if (mode === "chat") {
      body.model = form.chat_model.value;
      return body;
    }
    if (mode === "failover") {
      // A plain chat with a chain: billed, limited and logged like an API call with fallbacks.
      const chain = currentChain();
      body.type = "chat";
      body.model = chain[0];
      if (chain.length > 1) body.fallbacks = chain.slice(1);
      return body;
    }
    body.models = Array.from(form.querySelectorAll('input[name="models"]:checked')).map((el) => el.value);
    if (mode === "blend") {
      body.strategy = form.strategy.value;
      if (body.strategy === "synthesize") body.synthesizer = form.synthesizer.value;
    }
    if (mode === "judge" || (mode === "blend" && body.strategy === "best-of")) {
      body.judge_model = form.judge_model.value;
      const extra = form.criteria.value.split(",").map((s) => s.trim().toLowerCase()).filter(Boolean);
      if (extra.length) body.criteria = extra;
      if (form.both_orders.checked) body.both_orders = true;
    }
    return body;
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!ready || running !== null) return;
    counter += 1;
    running = "run-" + counter;
    cards.clear();
    results.replaceChildren();
    finalBox.hidden = true;
    totals.textContent = "";
    runButton.disabled = true;
    stopButton.disabled = false;
    const mode = form.dataset.mode;
    if (mode === "chat") card(0, form.chat_model.value);
    if (mode === "failover") {
      card(0, currentChain()[0] + " …");
      attemptsList.replaceChildren();
      answered.className = "";
      answered.textContent = "Walking the chain " + currentChain().join(" → ") + "…";
    }
    statusLine.textContent = "Starting…";
    socket.send(JSON.stringify(message(mode, running)));
  });

  stopButton.addEventListener("click", () => {
    if (running !== null) socket.send(JSON.stringify({ type: "cancel", id: running }));
  });

  // --- sandbox providers (sandbox mode, admins only) ------------------------------------------
  function showProviders(providers) {
    providers.forEach((state) => {
      const item = sandboxList.querySelector('[data-provider="' + state.provider + '"]');
      if (!item) return;
      item.dataset.broken = String(state.broken);
      const badge = item.querySelector(".provider-state");
      badge.textContent = state.broken ? "broken" : "working";
      badge.classList.toggle("is-broken", state.broken);
      badge.classList.toggle("is-working", !state.broken);
      item.querySelector('[data-action="break"]').hidden = state.broken;
      item.querySelector('[data-action="restore"]').hidden = !state.broken;
    });
  }

  async function sandboxAction(button) {
    const provider = button.dataset.provider;
    const action = button.dataset.action;
    const url = sandboxList.dataset.controlUrl.replace("PROVIDER", encodeURIComponent(provider));
    const body = new URLSearchParams({ action });
    button.disabled = true;
    sandboxStatus.textContent = (action === "break" ? "Breaking " : "Restoring ") + provider + "…";
    try {
      const response = await fetch(url, {
        method: "POST",
        body,
        credentials: "same-origin",
        headers: { "X-CSRFToken": form.csrfmiddlewaretoken.value, Accept: "application/json" },
      });
      const data = await response.json().catch(() => ({}));
      if (!response.ok) {
        sandboxStatus.textContent = (data.error && data.error.message) || "The request failed (" + response.status + ").";
        return;
      }
      showProviders(data.providers);
      sandboxStatus.textContent = provider + (action === "break"
        ? " is broken: its calls fail with 503 until you restore it."
        : " is restored.");
      // The button that was pressed is hidden now; keep keyboard focus on its twin.
      const twin = button.parentElement.querySelector('[data-action="' + (action === "break" ? "restore" : "break") + '"]');
      if (twin && !twin.hidden) twin.focus();
    } catch (error) {
      sandboxStatus.textContent = "Could not reach the server: " + error.message;
    } finally {
      button.disabled = false;
    }
  }

  if (sandboxList) {
    sandboxList.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-action]");
      if (button) sandboxAction(button);
    });
  }

  tabs.forEach((tab) => {
    tab.addEventListener("click", () => setMode(tab.dataset.mode));
    tab.addEventListener("keydown", onTabKey);
  });
  form.strategy.addEventListener("change", () => setMode(form.dataset.mode));
  setMode(form.dataset.mode);
  connect();
})();
