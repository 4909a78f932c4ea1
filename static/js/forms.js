// Form behaviours that used to be inline handlers (onchange=, onsubmit=), which the
// Content-Security-Policy forbids: script-src is 'self' only.
//   <select data-autosubmit>       submits its form when the choice changes (org switcher)
//   <form data-confirm="Sure?">    asks before submitting
//   <input data-select-on-focus>   selects its value on focus (below)
//   <button data-copy-target="id"> copies the text of element #id to the clipboard (below)
//   <div hx-trigger="every 5s" data-live-poll>  skips its refresh while the tab is hidden
"use strict";

document.addEventListener("change", (event) => {
  const field = event.target.closest("[data-autosubmit]");
  if (field && field.form) {
    field.form.submit();
  }
});

document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form.dataset ? form.dataset.confirm : undefined;
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

// <input data-select-on-focus>   selects its whole value on focus (a secret shown once)
document.addEventListener("focusin", (event) => {
  if (event.target.matches && event.target.matches("input[data-select-on-focus]")) {
    event.target.select();
  }
});

// <button data-copy-target="id">  copies the text of #id; the nearest [role=status] says so
document.addEventListener("click", (event) => {
  const button = event.target.closest ? event.target.closest("button[data-copy-target]") : null;
  if (!button) {
    return;
  }
  const source = document.getElementById(button.dataset.copyTarget);
  const section = button.closest("section") || document;
  const status = section.querySelector("[role=status]");
  const say = (text) => {
    if (status) {
      status.textContent = text;
    }
  };
  if (!source || !navigator.clipboard) {
    say("Copying is not available here: select the text and copy it.");
    return;
  }
  navigator.clipboard.writeText(source.textContent).then(
    () => say("Copied to the clipboard."),
    () => say("Copying was refused: select the text and copy it."),
  );
});

// [data-live-poll]: htmx polls it ("every Ns"); no request while the browser tab is hidden.
document.addEventListener("htmx:beforeRequest", (event) => {
  const element = event.target;
  if (document.hidden && element.matches && element.matches("[data-live-poll]")) {
    event.preventDefault();
  }
});
