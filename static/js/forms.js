// Form behaviours that used to be inline handlers (onchange=, onsubmit=), which the
// Content-Security-Policy forbids: script-src is 'self' only.
//   <select data-autosubmit>       submits its form when the choice changes (org switcher)
//   <form data-confirm="Sure?">    asks before submitting
//   <input data-select-on-focus>   selects its value on focus (below)
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
