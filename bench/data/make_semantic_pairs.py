"""Writes bench/data/semantic_pairs.jsonl: labelled prompt pairs for the semantic cache (issue 15).

Every pair was written by hand for llmbatch (no outside data set, no generated text), by the engineer
who built the semantic cache, by a reviewer (the reversed questions served before the order guard,
2026-12-03) and by the engineer who added that guard: short questions of the kind users send, and
batch-style prompts (one template filled with a document, as llmbatch's input files are). Each pair
says:

- ``same``: true when one answer serves both (paraphrase, formatting and whitespace, a template filled
  the same way, a rewording that moves words: ``reorder-paraphrase``), false when it must not (a
  number, date, negation, entity, polarity word, quoted text, the order of the words (``order``: "to
  pounds from kilograms") or the question's scope changed);
- ``kind``: which of those it is; ``style``: ``question`` or ``batch``; ``source``: where it comes from;
- ``split``: ``tuning`` (the guards and the default threshold were chosen looking at these) or
  ``held-out`` (written afterwards and only measured).

Run ``python bench/data/make_semantic_pairs.py`` to write the file again after editing the lists.
"""

from __future__ import annotations

import json
from pathlib import Path

SOURCE_Q = "hand-written short question (llmbatch, issue 15)"
SOURCE_B = "hand-written batch template filled with a hand-written document (llmbatch, issue 15)"

SAME_QUESTIONS = {
    "paraphrase": [
        ("What is RAG?", "Can you explain RAG?"),
        ("What is retrieval-augmented generation?", "Can you explain what retrieval-augmented generation is?"),
        ("What is the capital of France?", "Tell me the capital of France."),
        ("How do I reverse a list in Python?", "How can I reverse a list in Python?"),
        ("What does HTTP stand for?", "What is HTTP short for?"),
        ("Explain how a hash table works.", "How does a hash table work?"),
        ("What causes rainbows?", "Why do rainbows appear?"),
        ("How do vaccines work?", "Explain how vaccines work."),
        ("What is the boiling point of water at sea level?", "At sea level, what is the boiling point of water?"),
        ("Who wrote Pride and Prejudice?", "Who is the author of Pride and Prejudice?"),
        ("What is photosynthesis?", "Can you explain photosynthesis?"),
        ("How do I create a virtual environment in Python?", "How can I make a Python virtual environment?"),
        ("What is the difference between TCP and UDP?", "How does TCP differ from UDP?"),
        ("Give me a definition of inflation.", "Define inflation."),
        ("What is a black hole?", "Could you explain what a black hole is?"),
        ("How does compound interest work?", "Explain how compound interest works."),
        ("What is Kubernetes used for?", "What do people use Kubernetes for?"),
        ("Summarise the plot of Hamlet.", "Give me a summary of the plot of Hamlet."),
        ("What are the symptoms of dehydration?", "Which symptoms does dehydration cause?"),
        ("How do I undo the last git commit?", "How can I undo my last git commit?"),
        ("What is the speed of light?", "How fast does light travel?"),
        ("Translate 'thank you' into Spanish.", "How do you say 'thank you' in Spanish?"),
        ("What is machine learning?", "Explain machine learning."),
        ("Why is the sky blue?", "What makes the sky blue?"),
        ("How many continents are there?", "How many continents does the Earth have?"),
    ],
    "format": [
        ("What is RAG?", "what is RAG?"),
        ("What is the capital of France?", "What is the capital of France"),
        ("How do vaccines work?", "  How do vaccines work?  "),
        ("Explain how a hash table works.", "Explain how a hash table works"),
        ("Why is the sky blue?", "Why is the sky blue ?"),
        ("What is machine learning?", "What is machine learning??"),
        ("Define inflation.", "define inflation"),
        ("Who wrote Pride and Prejudice?", "Who wrote Pride and Prejudice ?"),
        ("What is a black hole?", "What is a black hole?\n"),
        ("How does compound interest work?", "How does compound  interest work?"),
    ],
}

DIFFERENT_QUESTIONS = {
    "number": [
        ("What is 12 times 7?", "What is 12 times 8?"),
        ("Book a table for two people.", "Book a table for three people."),
        ("Convert 100 miles to kilometres.", "Convert 150 miles to kilometres."),
        ("Give me 5 ideas for a birthday party.", "Give me 10 ideas for a birthday party."),
        ("Is 97 a prime number?", "Is 91 a prime number?"),
        ("What was the population of London in 1900?", "What was the population of London in 1950?"),
        ("Write a 100-word story about a cat.", "Write a 500-word story about a cat."),
        ("How much is 20% of 80?", "How much is 25% of 80?"),
        ("Is $50 a fair price for a used bike?", "Is $500 a fair price for a used bike?"),
        ("List the first 3 planets from the sun.", "List the first 4 planets from the sun."),
    ],
    "date": [
        ("What happened on 4 July 1776?", "What happened on 14 July 1789?"),
        ("What day of the week was 1 January 2000?", "What day of the week was 1 January 2001?"),
        ("Who won the World Cup in 2014?", "Who won the World Cup in 2018?"),
        ("Schedule the meeting for Monday.", "Schedule the meeting for Tuesday."),
        ("What holidays are in December?", "What holidays are in November?"),
        ("What is the weather usually like in March in Rome?", "What is the weather usually like in August in Rome?"),
    ],
    "negation": [
        ("Is the service available?", "Isn't the service available?"),
        ("Which foods contain gluten?", "Which foods do not contain gluten?"),
        ("Why do cats purr?", "Why don't cats purr?"),
        ("List countries that use the euro.", "List countries that don't use the euro."),
        ("Should I include a cover letter?", "Should I never include a cover letter?"),
        ("What can I eat during pregnancy?", "What can't I eat during pregnancy?"),
        ("Write a poem with rhymes.", "Write a poem without rhymes."),
        ("Which animals are mammals?", "Which animals are not mammals?"),
    ],
    "polarity": [
        ("Turn on the living room lights.", "Turn off the living room lights."),
        ("List the advantages of remote work.", "List the disadvantages of remote work."),
        ("Which is the largest planet?", "Which is the smallest planet?"),
        ("How do I increase my credit score?", "How do I decrease my credit score?"),
        ("What are the best practices for password storage?", "What are the worst practices for password storage?"),
        ("How do I enable two-factor authentication?", "How do I disable two-factor authentication?"),
        ("What is the highest mountain in Europe?", "What is the lowest point in Europe?"),
        ("Should I buy Tesla stock now?", "Should I sell Tesla stock now?"),
        ("How do I encrypt a file with gpg?", "How do I decrypt a file with gpg?"),
        ("What happens before a solar eclipse?", "What happens after a solar eclipse?"),
        ("How do I upload a file with curl?", "How do I download a file with curl?"),
        ("What is the fastest land animal?", "What is the slowest land animal?"),
    ],
    "entity": [
        ("What is the capital of France?", "What is the capital of Germany?"),
        ("Who founded Microsoft?", "Who founded Apple?"),
        ("Summarise the plot of Hamlet.", "Summarise the plot of Macbeth."),
        ("Who wrote Pride and Prejudice?", "Who wrote Sense and Sensibility?"),
        ("How do I reverse a list in Python?", "How do I reverse a list in JavaScript?"),
        ("What does the NHS do?", "What does the IRS do?"),
        ("What is the population of Canada?", "What is the population of Australia?"),
        ("How tall is Mount Everest?", "How tall is Mont Blanc?"),
        ("Paris is in which country?", "Lyon is in which country?"),
        ("What is AWS Lambda?", "What is Azure Functions?"),
        ("Tell me about Marie Curie.", "Tell me about Pierre Curie."),
        ("What is the GDP of Japan?", "What is the GDP of China?"),
    ],
    "quoted": [
        ("Translate 'good morning' into Spanish.", "Translate 'good night' into Spanish."),
        ('What does the word "ephemeral" mean?', 'What does the word "ethereal" mean?'),
        ("What does `os.walk` return?", "What does `os.scandir` return?"),
        ("Explain `git rebase`.", "Explain `git merge`."),
        ("What does list.sort() return in Python?", "What does sorted() return in Python?"),
        ('Is "affect" a verb?', 'Is "effect" a verb?'),
    ],
    "scope": [
        ("What are the benefits of exercise?", "What are the benefits of exercise for children?"),
        ("How do I make bread?", "How do I make gluten-free bread?"),
        ("Explain quantum computing.", "Explain quantum computing to a five-year-old."),
        ("What is the history of the internet?", "What is the future of the internet?"),
        ("How do I learn Spanish?", "How do I learn Spanish grammar?"),
        ("Write a haiku about autumn.", "Write a sonnet about autumn."),
        ("What is the capital of France?", "What is the population of France?"),
        ("How do I cook rice?", "How do I store cooked rice?"),
        ("Describe the water cycle.", "Describe the carbon cycle."),
        ("What should I pack for a beach holiday?", "What should I pack for a ski holiday?"),
        ("How does a car engine work?", "How does an electric car motor work?"),
        ("What is a good diet for weight loss?", "What is a good diet for muscle gain?"),
    ],
}

TICKET = "Summarise this support ticket in one sentence.\n\nTicket:\n{}"
REVIEW = "Classify the sentiment of this product review as positive, negative or mixed.\n\nReview: {}"
EXTRACT = "Extract the invoice number, the amount and the due date from this email as JSON.\n\nEmail:\n{}"

TICKETS = [
    "My parcel from order 1182 arrived damaged and I would like a replacement.",
    "I was charged twice for my subscription this month. Please refund one of the payments.",
    "The app crashes every time I open the settings page on my Android phone.",
    "I cannot log in since I changed my password yesterday; the reset email never arrives.",
    "The delivery address on order 5521 is wrong. It should be 12 Baker Street, not 21 Baker Street.",
    "Your website says the blue jacket is in stock, but checkout says it is sold out.",
]
REVIEWS = [
    "The headphones sound great and the battery lasts all week. Very happy with them.",
    "Stopped working after two days. Customer support never replied. Avoid.",
    "Comfortable shoes, but they run small and the colour is not as shown.",
    "Fast shipping and the blender is powerful, though it is louder than I expected.",
]
EMAILS = [
    "Hello, please find attached invoice INV-2291 for 1,250.00 EUR, due on 15 March 2025. Regards, Anna",
    "Reminder: invoice 88-104 over $430.50 is due by 2 June 2025. Thanks, Billing team",
    "Dear customer, invoice A-7731 (amount: 99.99 GBP) must be paid before 30 April 2025.",
]

# Batch pairs: the same document again with only layout changed (same), or with one fact changed (different).
SAME_BATCH = {
    "template-format": [
        (TICKET.format(TICKETS[0]), TICKET.format(TICKETS[0].replace(" and ", ", and "))),
        (TICKET.format(TICKETS[1]), TICKET.format(TICKETS[1].replace(". ", ".  "))),
        (TICKET.format(TICKETS[2]), TICKET.format("  " + TICKETS[2] + "\n")),
        (TICKET.format(TICKETS[3]), TICKET.format(TICKETS[3].replace("; ", ". "))),
        (TICKET.format(TICKETS[4]), TICKET.format(TICKETS[4].replace(". It", "; it"))),
        (TICKET.format(TICKETS[5]), TICKET.format(TICKETS[5].replace("Your website", "The website"))),
        (REVIEW.format(REVIEWS[0]), REVIEW.format(REVIEWS[0].replace("Very happy", "very happy").replace(". ", ", "))),
        (REVIEW.format(REVIEWS[1]), REVIEW.format(REVIEWS[1] + " ")),
        (
            REVIEW.format(REVIEWS[2]),
            REVIEW.format(REVIEWS[2].replace("Comfortable shoes, but", "Comfortable shoes but")),
        ),
        (REVIEW.format(REVIEWS[3]), REVIEW.format(REVIEWS[3].replace("the blender", "the blender itself"))),
        (EXTRACT.format(EMAILS[0]), EXTRACT.format(EMAILS[0].replace("Hello,", "Hi,"))),
        (EXTRACT.format(EMAILS[1]), EXTRACT.format(EMAILS[1].replace("Thanks,", "Thank you,"))),
        (EXTRACT.format(EMAILS[2]), EXTRACT.format(EMAILS[2].replace("Dear customer,", "Dear customer,\n"))),
    ],
    "template-paraphrase": [
        (
            TICKET.format(TICKETS[0]),
            "Summarise the following support ticket in a single sentence.\n\nTicket:\n" + TICKETS[0],
        ),
        (
            REVIEW.format(REVIEWS[1]),
            "Classify this product review's sentiment as positive, negative or mixed.\n\nReview: " + REVIEWS[1],
        ),
        (
            EXTRACT.format(EMAILS[1]),
            "From this email, extract the invoice number, the amount and the due date as JSON.\n\nEmail:\n" + EMAILS[1],
        ),
    ],
}
DIFFERENT_BATCH = {
    "template-number": [
        (TICKET.format(TICKETS[0]), TICKET.format(TICKETS[0].replace("1182", "1183"))),
        (TICKET.format(TICKETS[4]), TICKET.format(TICKETS[4].replace("5521", "5512"))),
        (EXTRACT.format(EMAILS[0]), EXTRACT.format(EMAILS[0].replace("1,250.00", "1,520.00"))),
        (EXTRACT.format(EMAILS[1]), EXTRACT.format(EMAILS[1].replace("$430.50", "$403.50"))),
        (EXTRACT.format(EMAILS[2]), EXTRACT.format(EMAILS[2].replace("A-7731", "A-7713"))),
        (REVIEW.format(REVIEWS[1]), REVIEW.format(REVIEWS[1].replace("two days", "two years"))),
    ],
    "template-date": [
        (EXTRACT.format(EMAILS[0]), EXTRACT.format(EMAILS[0].replace("15 March", "15 May"))),
        (EXTRACT.format(EMAILS[1]), EXTRACT.format(EMAILS[1].replace("2 June", "2 July"))),
        (TICKET.format(TICKETS[3]), TICKET.format(TICKETS[3].replace("yesterday", "last Monday"))),
    ],
    "template-negation": [
        (REVIEW.format(REVIEWS[0]), REVIEW.format(REVIEWS[0].replace("Very happy", "Not happy"))),
        (REVIEW.format(REVIEWS[3]), REVIEW.format(REVIEWS[3].replace("is powerful", "is not powerful"))),
        (TICKET.format(TICKETS[2]), TICKET.format(TICKETS[2].replace("crashes every time", "no longer crashes"))),
        (TICKET.format(TICKETS[5]), TICKET.format(TICKETS[5].replace("is in stock", "is not in stock"))),
        (REVIEW.format(REVIEWS[2]), REVIEW.format(REVIEWS[2].replace("run small", "do not run small"))),
    ],
    "template-entity": [
        (TICKET.format(TICKETS[2]), TICKET.format(TICKETS[2].replace("Android", "iPhone"))),
        (
            TICKET.format(TICKETS[4]),
            TICKET.format(TICKETS[4].replace("Baker Street, not 21 Baker Street", "Abbey Road, not 21 Baker Street")),
        ),
        (EXTRACT.format(EMAILS[0]), EXTRACT.format(EMAILS[0].replace("Anna", "Boris").replace("EUR", "USD"))),
    ],
    "template-polarity": [
        (
            TICKET.format(TICKETS[1]),
            TICKET.format(TICKETS[1].replace("twice", "once").replace("refund one of", "explain")),
        ),
        (REVIEW.format(REVIEWS[3]), REVIEW.format(REVIEWS[3].replace("louder", "quieter"))),
        (REVIEW.format(REVIEWS[2]), REVIEW.format(REVIEWS[2].replace("run small", "run large"))),
        (TICKET.format(TICKETS[5]), TICKET.format(TICKETS[5].replace("blue jacket", "red jacket"))),
    ],
    "template-document": [
        (TICKET.format(TICKETS[0]), TICKET.format(TICKETS[1])),
        (TICKET.format(TICKETS[2]), TICKET.format(TICKETS[3])),
        (TICKET.format(TICKETS[4]), TICKET.format(TICKETS[5])),
        (REVIEW.format(REVIEWS[0]), REVIEW.format(REVIEWS[1])),
        (REVIEW.format(REVIEWS[2]), REVIEW.format(REVIEWS[3])),
        (EXTRACT.format(EMAILS[0]), EXTRACT.format(EMAILS[1])),
        (EXTRACT.format(EMAILS[1]), EXTRACT.format(EMAILS[2])),
    ],
    "template-changed": [
        (TICKET.format(TICKETS[0]), TICKET.replace("one sentence", "three bullet points").format(TICKETS[0])),
        (
            REVIEW.format(REVIEWS[0]),
            REVIEW.replace("positive, negative or mixed", "a score from 1 to 5").format(REVIEWS[0]),
        ),
        (EXTRACT.format(EMAILS[2]), EXTRACT.replace("as JSON", "as CSV").format(EMAILS[2])),
    ],
}


# Written after the guards were last changed, and not used to change them or the threshold since:
# the figures on these pairs are the honest estimate for prompts the guards were not tuned on.
TRIAGE = "Route this message to one team (billing, shipping, tech, other). Reply with the team only.\n\nMessage: {}"
HELD_OUT_SAME = {
    "paraphrase": [
        ("What is an API?", "Can you explain what an API is?"),
        ("How do I boil an egg?", "How can I boil an egg?"),
        ("What is the meaning of life?", "What's the meaning of life?"),
        ("How does a refrigerator keep food cold?", "How does a fridge keep food cold?"),
        ("Explain recursion.", "Can you explain recursion?"),
        ("What is a mortgage?", "Could you explain what a mortgage is?"),
        ("How do plants grow?", "How do plants actually grow?"),
        ("What is the function of the liver?", "What does the liver do?"),
    ],
    "format": [
        ("How do I sort a dictionary by value in Python?", "how do I sort a dictionary by value in Python"),
        ("What is an API?", "What is an API ?"),
        ("Explain recursion.", "Explain   recursion."),
    ],
    "template-format": [
        (TRIAGE.format("I was billed twice for March."), TRIAGE.format("I was billed twice for March. ")),
        (
            TRIAGE.format("The tracking link says my parcel is lost."),
            TRIAGE.format("The tracking link says my parcel is lost"),
        ),
        (
            TRIAGE.format("The app will not start after the update."),
            TRIAGE.format("The app will not start after the update.\n"),
        ),
    ],
}
HELD_OUT_DIFFERENT = {
    "number": [
        ("How many calories are in 2 eggs?", "How many calories are in 3 eggs?"),
        ("What is the square root of 144?", "What is the square root of 169?"),
        ("Plan a 3-day trip to Rome.", "Plan a 7-day trip to Rome."),
        ("Is 5 GB enough storage for photos?", "Is 50 GB enough storage for photos?"),
    ],
    "date": [
        ("What were the main events of 1968?", "What were the main events of 1969?"),
        ("What is the weather like in Oslo in January?", "What is the weather like in Oslo in July?"),
    ],
    "negation": [
        ("Which vegetables can dogs eat?", "Which vegetables can dogs not eat?"),
        ("Is it safe to drink tap water in Mexico?", "Is it not safe to drink tap water in Mexico?"),
        ("What should I do when I can sleep?", "What should I do when I can't sleep?"),
    ],
    "polarity": [
        ("How do I make my code run faster?", "How do I make my code run slower?"),
        ("Why is the stock market going up?", "Why is the stock market going down?"),
        ("How do I add a user to a Linux group?", "How do I remove a user from a Linux group?"),
        ("What foods raise blood pressure?", "What foods lower blood pressure?"),
        ("How do I zoom in on a Mac?", "How do I zoom out on a Mac?"),
    ],
    "entity": [
        ("Who painted the Mona Lisa?", "Who painted the Sistine Chapel ceiling?"),
        ("What language is spoken in Brazil?", "What language is spoken in Argentina?"),
        ("How do I install Docker on Ubuntu?", "How do I install Docker on Windows?"),
        ("What is the tallest building in Dubai?", "What is the tallest building in Shanghai?"),
        ("Explain the plot of Inception.", "Explain the plot of Interstellar."),
    ],
    "quoted": [
        ("What does 'carpe diem' mean?", "What does 'memento mori' mean?"),
        ("What does the `-r` flag of cp do?", "What does the `-f` flag of cp do?"),
    ],
    "scope": [
        ("How do I write a cover letter?", "How do I write a resignation letter?"),
        ("What are good exercises for back pain?", "What are good exercises for knee pain?"),
        ("Recommend a book about history.", "Recommend a book about history for teenagers."),
        ("What is the best way to learn to swim?", "What is the best way to teach a child to swim?"),
        ("How do I clean a cast iron pan?", "How do I season a cast iron pan?"),
    ],
    "template-document": [
        (TRIAGE.format("I was billed twice for March."), TRIAGE.format("My parcel never arrived.")),
        (
            TRIAGE.format("The app will not start after the update."),
            TRIAGE.format("I want to change my delivery address."),
        ),
    ],
    "template-number": [
        (TRIAGE.format("I was billed twice for March."), TRIAGE.format("I was billed three times for March.")),
        (TRIAGE.format("Order 4411 is late."), TRIAGE.format("Order 4412 is late.")),
    ],
    "template-negation": [
        (
            TRIAGE.format("The app will not start after the update."),
            TRIAGE.format("The app will start after the update, but slowly."),
        ),
    ],
}


# Found by a reviewer on 2026-12-03 (served with --semantic at similarities of 0.95-0.999: the guards
# compared names, units and numbers as sets, so a swap passed, and "ascending", "increasing" were not
# polarity words). Found after the guards were tuned, so held out.
SOURCE_R = "reviewer, 2026-12-03 (/tmp/review/repro/r1_semantic_swap.sh and the files beside it)"
REVIEWER_DIFFERENT = {
    "order": [
        ("How do I convert Celsius to Fahrenheit?", "How do I convert Fahrenheit to Celsius?"),
        ("Did Germany invade Poland in 1939?", "Did Poland invade Germany in 1939?"),
        ("Convert kilograms to pounds: 5 kg", "Convert pounds to kilograms: 5 kg"),
        ("Is London bigger than Paris?", "Is Paris bigger than London?"),
        ("Translate from English to French: I am happy.", "Translate from French to English: I am happy."),
        ("How do I convert a list to a tuple in Python?", "How do I convert a tuple to a list in Python?"),
        ("How do I convert a string to an integer in Python?", "How do I convert an integer to a string in Python?"),
    ],
    "polarity": [
        ("Sort these numbers in ascending order: 5, 3, 9, 1", "Sort these numbers in descending order: 5, 3, 9, 1"),
        ("Sort the list in increasing order: 4, 2, 8", "Sort the list in decreasing order: 4, 2, 8"),
    ],
    # in the same files, and still served once the order guard was in (0.985)
    "scope": [
        ("Explain quantum computing to a child.", "Explain quantum computing to a child in detail."),
    ],
}

# Written with the order guard (2026-12-03), after the reviewer's report: more reversals, the same
# questions reworded with their words in the same order (which must still be served), and rewordings
# that move the words (one answer serves both, but the order guard refuses them: what it costs).
SOURCE_O = "hand-written after the reviewer's report of 2026-12-03 (llmbatch, order guard)"
ORDER_DIFFERENT = {
    "order": [
        ("What is 12 minus 7?", "What is 7 minus 12?"),
        ("Divide 100 by 4.", "Divide 4 by 100."),
        ("Convert 10 USD to EUR.", "Convert 10 EUR to USD."),
        (
            "What time is it in Tokyo when it is 9 am in London?",
            "What time is it in London when it is 9 am in Tokyo?",
        ),
        ("Did the Romans conquer the Greeks?", "Did the Greeks conquer the Romans?"),
        ("Can a cat eat dog food?", "Can a dog eat cat food?"),
        (
            "How do I merge the main branch into my feature branch?",
            "How do I merge my feature branch into the main branch?",
        ),
        ("Is a square a rectangle?", "Is a rectangle a square?"),
        ("How do I convert JSON to YAML?", "How do I convert YAML to JSON?"),
        (
            "Copy the files from the server to my laptop with scp.",
            "Copy the files from my laptop to the server with scp.",
        ),
        # the same words in the same order, the direction reversed by the prepositions
        ("How do I convert Fahrenheit to Celsius?", "How do I convert to Fahrenheit from Celsius?"),
        ("Copy the files from my laptop to the server.", "Copy the files to my laptop from the server."),
        ("Translate from French into English: I am happy.", "Translate into French from English: I am happy."),
        ("List the files from oldest to newest.", "List the files from newest to oldest."),
    ],
    "polarity": [
        ("Sort the names in alphabetical order.", "Sort the names in reverse alphabetical order."),
        ("How do I scroll upwards in tmux?", "How do I scroll downwards in tmux?"),
        ("How do I move the cursor forward one word in bash?", "How do I move the cursor backward one word in bash?"),
    ],
}
ORDER_SAME = {
    "paraphrase": [
        ("How do I convert Celsius to Fahrenheit?", "How can I convert Celsius to Fahrenheit?"),
        ("Convert kilograms to pounds: 5 kg", "Convert kilograms into pounds: 5 kg"),
        ("Is London bigger than Paris?", "Is London a bigger city than Paris?"),
        ("How do I convert a list to a tuple in Python?", "How can I turn a list into a tuple in Python?"),
        ("Translate from English to French: I am happy.", "Translate this from English into French: I am happy."),
        (
            "Sort these numbers in ascending order: 5, 3, 9, 1",
            "Sort the following numbers in ascending order: 5, 3, 9, 1",
        ),
        ("How do I convert Celsius to Fahrenheit?", "How to convert Celsius to Fahrenheit?"),
        ("Translate from English to French: I am happy.", "Translate English into French: I am happy."),
        ("What is 12 minus 7?", "What does 12 minus 7 equal?"),
        (
            "How do I merge the main branch into my feature branch?",
            "How can I merge the main branch into my feature branch?",
        ),
        ("Did the Romans conquer the Greeks?", "Did the Romans ever conquer the Greeks?"),
        ("How do I convert JSON to YAML?", "What is the way to convert JSON to YAML?"),
    ],
    "reorder-paraphrase": [
        ("What is the capital of France?", "France's capital?"),
        ("What is the difference between TCP and UDP?", "What is the difference between UDP and TCP?"),
        ("Did Germany invade Poland in 1939?", "In 1939, did Germany invade Poland?"),
        ("How do I convert a list to a tuple in Python?", "In Python, how do I convert a list to a tuple?"),
        ("How much does a Tesla Model 3 cost in Germany?", "In Germany, how much does a Tesla Model 3 cost?"),
        ("What are the side effects of ibuprofen?", "Ibuprofen: what are its side effects?"),
        ("Who wrote Pride and Prejudice?", "Pride and Prejudice was written by whom?"),
    ],
}


SOURCE_S = "hand-written after measuring long templates, 2026-12-03 (llmbatch, substitution guard)"
KETTLE = (
    "The kettle I bought last month stopped heating after a week. The light comes on and it makes a faint "
    "clicking sound but the water never gets warm. I have descaled it and tried another socket. "
)
# One instruction word swapped inside a template filled with the same document: the model scores
# these 0.91-0.98, and no number, name, negation or quote differs.
SUBSTITUTION_DIFFERENT = {
    "template-substitution": [
        (
            TICKET.format(KETTLE + "The customer would like us to repair the kettle."),
            TICKET.format(KETTLE + "The customer would like us to refund the kettle."),
        ),
        (
            "Extract the sender's email address from this message: " + KETTLE,
            "Extract the sender's phone number from this message: " + KETTLE,
        ),
        (
            "Summarise this support ticket in one sentence: the customer would like us to repair the kettle.",
            "Summarise this support ticket in one sentence: the customer would like us to refund the kettle.",
        ),
        (
            "Translate this support ticket into formal English: " + KETTLE,
            "Translate this support ticket into plain English: " + KETTLE,
        ),
        (
            "List the symptoms the customer describes in this ticket: " + KETTLE,
            "List the steps the customer already tried in this ticket: " + KETTLE,
        ),
    ],
}
# The same template with its document laid out differently, or with words added: one answer.
SUBSTITUTION_SAME = {
    "template-format": [
        (
            TICKET.format(KETTLE + "The customer would like us to repair the kettle."),
            TICKET.format(KETTLE.replace(". ", ".\n") + "The customer would like us to repair the kettle."),
        ),
        (
            "Extract the sender's email address from this message: " + KETTLE,
            "Please extract the sender's email address from the following message: " + KETTLE,
        ),
    ],
}


# A second review's short questions that swap one word (42 pairs, /tmp/review24/sem*A.jsonl and
# sem*B.jsonl): at 0.90 with the guards of the time, 5 were served (men/women, vegan/vegetarian,
# beginner/advanced, simply/technically, time/space). The swap guard was written looking at them.
SOURCE_R24 = "second reviewer, 2026-12-03 (/tmp/review24/repro_semantic.sh and the files beside it)"
REVIEWER24_DIFFERENT = {
    "one-word-swap": [
        ("List the pros of nuclear energy.", "List the cons of nuclear energy."),
        (
            "What is the maximum daily dose of ibuprofen for adults?",
            "What is the minimum daily dose of ibuprofen for adults?",
        ),
        ("Write a python function that reverses a string.", "Write a javascript function that reverses a string."),
        ("How do I install numpy on windows?", "How do I install numpy on mac?"),
        ("Is it safe to eat raw chicken?", "Is it safe to eat cooked chicken?"),
        ("Explain the advantages of remote work.", "Explain the disadvantages of remote work."),
        ("Write a haiku about autumn leaves.", "Write a limerick about autumn leaves."),
        ("Summarize the plot of the movie in one sentence.", "Summarize the plot of the movie in one paragraph."),
        (
            "What are the early symptoms of a heart attack in women?",
            "What are the early symptoms of a heart attack in men?",
        ),
        ("Give me a recipe for vegetarian lasagna.", "Give me a recipe for vegan lasagna."),
        ("How do I kill a python process on linux?", "How do I kill a java process on linux?"),
        (
            "What is the boiling point of water at sea level in fahrenheit?",
            "What is the boiling point of water at sea level in celsius?",
        ),
        (
            "Translate this sentence into german: the cat sleeps.",
            "Translate this sentence into spanish: the cat sleeps.",
        ),
        ("Explain how vaccines work for adults.", "Explain how vaccines work for children."),
        ("Is coffee good for people with high blood pressure?", "Is coffee bad for people with high blood pressure?"),
        ("What foods should I eat to lose weight?", "What foods should I avoid to lose weight?"),
        ("Write a formal email declining the job offer.", "Write a formal email accepting the job offer."),
        ("How do I convert a list to a tuple in python?", "How do I convert a tuple to a list in python?"),
        ("Explain the causes of the first world war.", "Explain the consequences of the first world war."),
        ("What should a diabetic patient eat for breakfast?", "What should a diabetic patient not eat for breakfast?"),
        (
            "Give me a beginner workout plan for building muscle.",
            "Give me an advanced workout plan for building muscle.",
        ),
        ("Write a short story for kids about a brave dog.", "Write a short story for adults about a brave dog."),
        ("Recommend a good book for a teenager.", "Recommend a good book for a toddler."),
        ("Explain photosynthesis simply.", "Explain photosynthesis technically."),
        ("Which is faster, a cheetah or a horse?", "Which is slower, a cheetah or a horse?"),
        ("What are the side effects of aspirin in children?", "What are the side effects of aspirin in pregnancy?"),
        ("How to make a cake without eggs?", "How to make a cake with eggs?"),
        (
            "Write an email to my landlord asking to renew the lease.",
            "Write an email to my landlord asking to terminate the lease.",
        ),
        ("what is the capital of austria?", "what is the capital of australia?"),
        ("how many calories are in an apple?", "how many calories are in a banana?"),
        ("what year did world war one end?", "what year did world war two end?"),
        ("who wrote the novel dune?", "who directed the movie dune?"),
        ("convert 5 miles to kilometers", "convert 5 kilometers to miles"),
        ("what is the time complexity of quicksort?", "what is the space complexity of quicksort?"),
        ("is a tomato a fruit?", "is a tomato a vegetable?"),
        ("how do i center a div horizontally?", "how do i center a div vertically?"),
        ("what is the speed of light in a vacuum?", "what is the speed of sound in a vacuum?"),
        ("give me a synonym for happy", "give me an antonym for happy"),
        ("what is the melting point of iron?", "what is the melting point of gold?"),
        ("summarize this article for a child", "summarize this article for an expert"),
        ("write a sql query to delete duplicate rows", "write a sql query to find duplicate rows"),
        ("how to lose weight fast", "how to gain weight fast"),
    ],
}


def main() -> None:
    rows = []
    for groups, same, style, source, split in (
        (SAME_QUESTIONS, True, "question", SOURCE_Q, "tuning"),
        (DIFFERENT_QUESTIONS, False, "question", SOURCE_Q, "tuning"),
        (SAME_BATCH, True, "batch", SOURCE_B, "tuning"),
        (DIFFERENT_BATCH, False, "batch", SOURCE_B, "tuning"),
        (HELD_OUT_SAME, True, None, SOURCE_Q, "held-out"),
        (HELD_OUT_DIFFERENT, False, None, SOURCE_Q, "held-out"),
        (REVIEWER_DIFFERENT, False, "question", SOURCE_R, "held-out"),
        (ORDER_SAME, True, "question", SOURCE_O, "tuning"),
        (ORDER_DIFFERENT, False, "question", SOURCE_O, "tuning"),
        (SUBSTITUTION_SAME, True, "batch", SOURCE_S, "tuning"),
        (SUBSTITUTION_DIFFERENT, False, "batch", SOURCE_S, "tuning"),
        (REVIEWER24_DIFFERENT, False, "question", SOURCE_R24, "tuning"),
    ):
        for kind, pairs in groups.items():
            for a, b in pairs:
                assert a != b, (kind, a)
                row_style = style or ("batch" if kind.startswith("template") else "question")
                row_source = SOURCE_B if row_style == "batch" and source in (SOURCE_Q, SOURCE_B) else source
                row = {
                    "a": a,
                    "b": b,
                    "same": same,
                    "kind": kind,
                    "style": row_style,
                    "source": row_source,
                    "split": split,
                }
                rows.append(row)
    out = Path(__file__).with_name("semantic_pairs.jsonl")
    out.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    print(f"{out}: {len(rows)} pairs, {sum(r['same'] for r in rows)} same-answer")


if __name__ == "__main__":
    main()
